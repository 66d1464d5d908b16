//! Benchmark: one operator for 1 000 instances and 10 000 sidecars, and what it costs the
//! API server (`make bench-scale`).
//!
//! Real parts only: the tests' control plane (kube-apiserver + etcd), 10 real redis-servers,
//! the real operator binary (release build), 1 000 RedisInstances over those servers probed
//! every 10 s, one CachePolicy with 50 categories. Figures, each measured:
//! - **operator**: time until all instances are Ready; then, in steady state, API writes per
//!   second (the API server's own `apiserver_request_total`, PATCH/PUT/POST/DELETE), CPU and
//!   RSS of the operator process (`/proc`), and the API connections it opened (a counting TCP
//!   proxy in front of the API server: TLS passes through, one accept = one handshake);
//! - **sidecar swarm**: 10 000 heartbeat writers with the real heartbeat command on every
//!   redis-server; Redis's own per-call cost (`INFO commandstats`), and the converge check
//!   (`heartbeat::read`) at 10 000 live sidecars: time and reply size;
//! - **`--configmap` sidecars**: 10 000 watches of the routing ConfigMap, each its own TLS
//!   connection: the API server's memory and CPU per table update, and the fan-out time;
//! - **routing table size** at 1 000, 1 400 and 5 000 instances × 200 categories, per schema.
//!
//! Numbers are printed side by side with the targets of issue 17; nothing here asserts a
//! timing. This build's operator is `redis-fleet-operator`, as the chart runs it;
//! `REDIS_FLEET_BASELINE_BIN=<another redis-fleet binary>` (run as `redis-fleet operator`)
//! measures that build's operator first, in the same run, for a before/after. Sizes can be changed with
//! `SCALE_INSTANCES`, `SCALE_SIDECARS`, `SCALE_WATCHERS`, `SCALE_WINDOW` (seconds) and
//! `SCALE_KEYS` (keys per redis-server, 20 000: sampling memory per category does real work);
//! `SCALE_PHASES=operator,swarm,watches,tables` picks phases. Every server takes 200 writes/s
//! of expiring keys throughout, as an application would. Under `cargo
//! test` (no `--bench` argument) the same path runs at a small size as a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "scale/apiserver.rs"]
mod apiserver;
#[path = "scale/procstat.rs"]
mod procstat;
#[path = "scale/proxy.rs"]
mod proxy;
#[path = "scale/swarm.rs"]
mod swarm;
#[path = "scale/tables.rs"]
mod tables;
#[path = "scale/watchers.rs"]
mod watchers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use redis_fleet::api::CachePolicy;
use redis_fleet::api::redis_instance::{InstancePhase, RedisInstance};
use support::control_plane::ADMIN_TOKEN;
use support::operator::Operator;
use support::{ControlPlane, RedisOptions, RedisServer};

/// How big a run is.
#[derive(Debug, Clone, Copy)]
struct Size {
    servers: usize,
    instances: usize,
    categories: usize,
    sidecars: usize,
    watchers: usize,
    settle: Duration,
    /// Longest wait for the routing to converge before the steady window.
    converge_limit: Duration,
    window: Duration,
}

impl Size {
    fn from_env(bench: bool) -> Size {
        let env = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        if bench {
            Size {
                servers: 10,
                instances: env("SCALE_INSTANCES", 1000),
                categories: 50,
                sidecars: env("SCALE_SIDECARS", 10_000),
                watchers: env("SCALE_WATCHERS", 10_000),
                settle: Duration::from_secs(30),
                converge_limit: Duration::from_secs(900),
                window: Duration::from_secs(env("SCALE_WINDOW", 60) as u64),
            }
        } else {
            Size {
                servers: 2,
                instances: 20,
                categories: 5,
                sidecars: 200,
                watchers: 20,
                settle: Duration::from_secs(2),
                converge_limit: Duration::from_secs(120),
                window: Duration::from_secs(5),
            }
        }
    }
}

/// One line of the report.
struct Row {
    figure: String,
    before: Option<String>,
    measured: String,
    target: String,
    met: Option<bool>,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    fn add(&mut self, figure: &str, measured: String, target: &str, met: Option<bool>) {
        self.rows.push(Row {
            figure: figure.to_owned(),
            before: None,
            measured,
            target: target.to_owned(),
            met,
        });
    }

    fn print(&self) {
        let before = self.rows.iter().any(|r| r.before.is_some());
        println!();
        if before {
            println!(
                "{:<52} {:>16} {:>16} {:>12}",
                "figure", "before", "measured", "target"
            );
        } else {
            println!("{:<52} {:>16} {:>12}", "figure", "measured", "target");
        }
        for r in &self.rows {
            let verdict = match r.met {
                Some(true) => "met",
                Some(false) => "NOT MET",
                None => "",
            };
            if before {
                println!(
                    "{:<52} {:>16} {:>16} {:>12}  {verdict}",
                    r.figure,
                    r.before.as_deref().unwrap_or("-"),
                    r.measured,
                    r.target
                );
            } else {
                println!(
                    "{:<52} {:>16} {:>12}  {verdict}",
                    r.figure, r.measured, r.target
                );
            }
        }
        for n in &self.notes {
            println!("  {n}");
        }
    }
}

/// What one operator run measured.
#[derive(Debug, Clone)]
struct OperatorFigures {
    all_ready: Duration,
    writes_per_second: f64,
    writes: BTreeMap<String, f64>,
    reads_per_second: f64,
    cores: f64,
    rss: u64,
    /// Of `rss`, the file-backed pages (the binary's code).
    rss_file: u64,
    /// Events last seen in the window, by reason (their counts).
    event_reasons: BTreeMap<String, i32>,
    /// Since the start, when the routing table had been stable (and listed no copies to free)
    /// for the settle time; `None` when that never happened.
    converged: Option<Duration>,
    /// The operator's routing work logged in the window, by kind.
    window_log: BTreeMap<&'static str, usize>,
    peak_rss: u64,
    connections_in_window: u64,
    connections_total: u64,
    connections_open: u64,
    table_bytes: usize,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn kib(bytes: usize) -> String {
    format!("{:.0} KiB", bytes as f64 / 1024.0)
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let size = Size::from_env(bench);
    println!("bench-scale: {size:?}");
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let servers: Vec<RedisServer> = (0..size.servers)
        .map(|_| RedisServer::start(RedisOptions::with_maxmemory(30 << 20)))
        .collect();
    // Some data, so that sampling (memory per category) does real work.
    let keys = std::env::var("SCALE_KEYS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(if bench { 20_000 } else { 1_000 });
    for server in &servers {
        fill(server, size.categories, keys).await;
    }
    // An application's traffic on every server all along (200 writes/s each, keys that
    // expire after 30 s): memory, keys and ops/s move a little between probes, as in a
    // fleet in use.
    for server in &servers {
        tokio::spawn(traffic(server.url(), size.categories));
    }
    let mut report = Report::default();
    let phases = std::env::var("SCALE_PHASES").unwrap_or_else(|_| "all".into());
    let phase = |name: &str| phases == "all" || phases.split(',').any(|p| p == name);

    // 1. The operator: the baseline build first (if given), then this one.
    let baseline = std::env::var_os("REDIS_FLEET_BASELINE_BIN").map(PathBuf::from);
    let before = match &baseline {
        Some(bin) => {
            println!("== operator (baseline: {})", bin.display());
            Some(run_operator(cp, &client, &servers, size, bin).await.0)
        }
        None => None,
    };
    println!("== operator (this build)");
    let (after, ns, _operator) =
        run_operator(cp, &client, &servers, size, &support::operator_binary()).await;
    operator_rows(&mut report, before.as_ref(), &after, size);

    // 2. The sidecar swarm: heartbeats and the converge check.
    if phase("swarm") {
        println!("== sidecar swarm: {} heartbeat writers", size.sidecars);
        swarm_rows(&mut report, &servers, &format!("{ns}/scale"), size).await;
    }

    // 3. Sidecars in --configmap mode: watches of the routing ConfigMap.
    if phase("watches") {
        println!("== {} watches of the routing ConfigMap", size.watchers);
        watch_rows(&mut report, cp, &client, &ns, size).await;
    }

    // 4. Routing table sizes.
    if phase("tables") {
        println!("== routing table sizes");
        tables::rows(&mut report, bench);
    }

    report.print();
}

/// Starts the operator `binary` on a fresh namespace of `size.instances` instances and one
/// policy; returns its figures, the namespace and the running operator.
async fn run_operator(
    cp: &ControlPlane,
    client: &Client,
    servers: &[RedisServer],
    size: Size,
    binary: &Path,
) -> (OperatorFigures, String, Operator) {
    let ns = cp.namespace(client, "bench-scale").await;
    create_fleet(client, &ns, servers, size).await;

    // The operator reaches the API server through a counting proxy.
    let upstream: SocketAddr = cp.server.trim_start_matches("https://").parse().unwrap();
    let proxy = proxy::CountingProxy::start(upstream).await;
    let kubeconfig = cp.dir.join(format!("kubeconfig-{ns}"));
    let text = std::fs::read_to_string(&cp.kubeconfig)
        .unwrap()
        .replace(&cp.server, &format!("https://127.0.0.1:{}", proxy.port));
    std::fs::write(&kubeconfig, text).unwrap();

    // Watch the instances from the bench (its own connection, not through the proxy).
    let ris: Api<RedisInstance> = Api::namespaced(client.clone(), &ns);
    let (store, writer) = reflector::store();
    let watch = watcher(ris, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .for_each(|_| futures::future::ready(()));
    let watch = tokio::spawn(watch);
    store.wait_until_ready().await.unwrap();

    let started = Instant::now();
    let operator = Operator::launch(binary, &kubeconfig, &ns, &[], "info");
    let pid = operator.pid().unwrap();
    let ready = |store: &reflector::Store<RedisInstance>| {
        store
            .state()
            .iter()
            .filter(|ri| ri.status.as_ref().and_then(|s| s.phase) == Some(InstancePhase::Ready))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while ready(&store) < size.instances {
        assert!(
            Instant::now() < deadline,
            "only {} of {} instances Ready after 10 minutes\n{}",
            ready(&store),
            size.instances,
            operator.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_ready = started.elapsed();
    println!("  all {} Ready after {all_ready:.1?}", size.instances);
    // The table with every instance published (the policy's status may fail to be written:
    // before issue 17, its usage list outgrew etcd's request limit with data in the fleet).
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    support::wait_for(
        &cms,
        "scale-routing",
        Duration::from_secs(300),
        "the routing table with every instance",
        |cm| {
            redis_fleet::routing::config_map::table_of(cm)
                .and_then(Result::ok)
                .is_some_and(|t| t.instances.len() == size.instances)
        },
    )
    .await;
    // Steady means converged: the joins' tables published and every copy they left freed
    // (the purges of a join scan each instance gaining ranges; on these shared servers each
    // scan reads a hundred instances' keys), then the same table for `settle`.
    let converged = converged(&cms, size.settle, size.converge_limit)
        .await
        .map(|_| started.elapsed().saturating_sub(size.settle));
    match converged {
        Some(c) => println!("  routing converged after {c:.1?}"),
        None => println!(
            "  routing not converged within {:?}: measuring all the same",
            size.converge_limit
        ),
    }

    // The steady window.
    let log_before = log_counts(&operator.logs());
    let before = apiserver::requests(client).await;
    let conns_before = proxy.accepted();
    let cpu = procstat::CpuMeter::start(pid);
    let t0 = Instant::now();
    tokio::time::sleep(size.window).await;
    let cores = cpu.cores();
    let after = apiserver::requests(client).await;
    let window_log: BTreeMap<&'static str, usize> = log_counts(&operator.logs())
        .into_iter()
        .map(|(what, n)| (what, n - log_before.get(what).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let window = t0.elapsed().as_secs_f64();
    let (rss, peak_rss) = procstat::memory(pid);
    let rss_file = procstat::file_backed(pid);
    let writes = apiserver::writes_between(&before, &after);
    let cm = cms.get("scale-routing").await.unwrap();
    let table_bytes = cm
        .data
        .iter()
        .flatten()
        .map(|(_, v)| v.len())
        .sum::<usize>()
        + cm.binary_data
            .iter()
            .flatten()
            .map(|(_, v)| v.0.len())
            .sum::<usize>();
    watch.abort();
    // What the Events written during the window say (a steady operator writes none).
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
    let mut event_reasons: BTreeMap<String, i32> = BTreeMap::new();
    let window_start =
        jiff::Timestamp::now() - jiff::SignedDuration::from_secs_f64(t0.elapsed().as_secs_f64());
    for e in events.list(&Default::default()).await.unwrap() {
        // kube's recorder writes `eventTime` once and counts repeats in `series`.
        let series = e.series.as_ref();
        let last = series
            .and_then(|s| s.last_observed_time.as_ref())
            .map(|t| t.0)
            .or(e.last_timestamp.as_ref().map(|t| t.0))
            .or(e.event_time.as_ref().map(|t| t.0));
        if last.is_some_and(|t| t >= window_start) {
            let count = series.and_then(|s| s.count).or(e.count).unwrap_or(1);
            *event_reasons
                .entry(e.reason.clone().unwrap_or_default())
                .or_default() += count;
        }
    }
    let figures = OperatorFigures {
        all_ready,
        writes_per_second: writes.values().sum::<f64>() / window,
        reads_per_second: apiserver::reads_between(&before, &after) / window,
        writes: writes.into_iter().map(|(k, v)| (k, v / window)).collect(),
        cores,
        rss,
        rss_file,
        peak_rss,
        event_reasons,
        converged,
        window_log,
        connections_in_window: proxy.accepted() - conns_before,
        connections_total: proxy.accepted(),
        connections_open: proxy.open(),
        table_bytes,
    };
    println!("  {figures:#?}");
    std::mem::forget(proxy); // keeps serving the operator that is still running
    (figures, ns, operator)
}

/// Waits until the routing ConfigMap has kept its version, listing no copies to free, for
/// `settle`; how long the wait took (`None`: not within `limit`).
async fn converged(cms: &Api<ConfigMap>, settle: Duration, limit: Duration) -> Option<Duration> {
    use redis_fleet::operator::cache_policy::unfreed::UNFREED_ANNOTATION;
    let started = Instant::now();
    let mut last: Option<(Option<u64>, Instant)> = None;
    while started.elapsed() < limit {
        if let Ok(cm) = cms.get("scale-routing").await {
            let version = redis_fleet::routing::config_map::annotated_version(&cm);
            let unfreed = cm
                .annotations()
                .get(UNFREED_ANNOTATION)
                .is_some_and(|v| !v.trim().is_empty());
            match last {
                Some((v, since)) if v == version && !unfreed => {
                    if since.elapsed() >= settle {
                        return Some(started.elapsed());
                    }
                }
                _ => last = (!unfreed).then_some((version, Instant::now())),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    None
}

/// How many times the operator's log says it published a table or purged an instance.
fn log_counts(log: &str) -> BTreeMap<&'static str, usize> {
    [
        ("tables published", "published routing table"),
        (
            "purges before publishing",
            "removed stale copies before routing",
        ),
        ("purges of copies to free", "freed copies of ranges"),
    ]
    .into_iter()
    .map(|(what, needle)| (what, log.matches(needle).count()))
    .collect()
}

/// 200 writes/s of keys that expire after 30 s, forever.
async fn traffic(url: String, categories: usize) {
    let Ok(client) = redis::Client::open(url.as_str()) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut n = 0u64;
    loop {
        tick.tick().await;
        let mut pipe = redis::pipe();
        for _ in 0..20 {
            n += 1;
            pipe.cmd("SET")
                .arg(format!("c{}:t{n}", n as usize % categories))
                .arg([b'v'; 100].as_slice())
                .arg("EX")
                .arg(30);
        }
        let _ = pipe.query_async::<()>(&mut conn).await;
    }
}

/// Writes `keys` keys of 100 bytes over the categories' prefixes into `server`.
async fn fill(server: &RedisServer, categories: usize, keys: usize) {
    let mut conn = server.bookkeeping_connection().await;
    for start in (0..keys).step_by(1000) {
        let mut pipe = redis::pipe();
        for n in start..(start + 1000).min(keys) {
            pipe.cmd("SET")
                .arg(format!("c{}:{n:08}", n % categories))
                .arg([b'v'; 100].as_slice());
        }
        pipe.query_async::<()>(&mut conn).await.unwrap();
    }
}

/// `size.instances` RedisInstances over `servers`, in ten tiers, and the policy `scale`.
async fn create_fleet(client: &Client, ns: &str, servers: &[RedisServer], size: Size) {
    let api: Api<RedisInstance> = Api::namespaced(client.clone(), ns);
    let tiers = servers.len();
    futures::stream::iter(0..size.instances)
        .map(|i| {
            let api = api.clone();
            let port = servers[i % servers.len()].port;
            async move {
                let ri: RedisInstance = serde_json::from_value(serde_json::json!({
                    "apiVersion": "redisfleet.io/v1alpha1", "kind": "RedisInstance",
                    "metadata": {"name": format!("redis-{i:04}"),
                                 "labels": {"redisfleet.io/tier": format!("tier-{}", i % tiers)}},
                    "spec": {"external": {"host": "127.0.0.1", "port": port},
                             "health": {"interval": "10s", "timeout": "2s"}}
                }))
                .unwrap();
                api.create(&PostParams::default(), &ri).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let categories: Vec<serde_json::Value> = (0..size.categories)
        .map(|c| {
            serde_json::json!({
                "name": format!("c{c:02}"),
                "keyPrefixes": [format!("c{c}:")],
                "tier": format!("tier-{}", c % tiers),
                "fallbackTier": format!("tier-{}", (c + 1) % tiers),
                "ttl": {"default": "1h", "max": "24h"}
            })
        })
        .collect();
    let policy: CachePolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "redisfleet.io/v1alpha1", "kind": "CachePolicy",
        "metadata": {"name": "scale"},
        // No rebalance: no kubelet runs Jobs here, and the steady state is what is measured.
        "spec": {"categories": categories, "defaultCategory": {"tier": "tier-0"},
                 "balancing": {"rebalance": {"enabled": false}}}
    }))
    .unwrap();
    Api::<CachePolicy>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
}

/// A figure of an operator run: its name, how to print it, the target, whether it is met.
type FigureRow = (
    String,
    Box<dyn Fn(&OperatorFigures) -> String>,
    String,
    Option<bool>,
);

fn operator_rows(
    report: &mut Report,
    before: Option<&OperatorFigures>,
    f: &OperatorFigures,
    size: Size,
) {
    let n = size.instances;
    let mut rows: Vec<FigureRow> = vec![
        (
            format!("{n} instances: all Ready after"),
            Box::new(|f| format!("{:.1} s", f.all_ready.as_secs_f64())),
            String::new(),
            None,
        ),
        (
            "routing converged (table stable, nothing to free)".into(),
            Box::new(|f| {
                f.converged.map_or_else(
                    || "never".to_owned(),
                    |c| format!("{:.1} s", c.as_secs_f64()),
                )
            }),
            String::new(),
            None,
        ),
        (
            "steady state: API writes/s in the window (all kinds)".into(),
            Box::new(|f| format!("{:.2}", f.writes_per_second)),
            String::new(),
            None,
        ),
        (
            "steady state: API reads/s (incl. watch events)".into(),
            Box::new(|f| format!("{:.2}", f.reads_per_second)),
            String::new(),
            None,
        ),
        (
            "steady state: operator CPU".into(),
            Box::new(|f| format!("{:.3} cores", f.cores)),
            "≤ 0.1 core".into(),
            Some(f.cores <= 0.1),
        ),
        (
            "steady state: operator RSS".into(),
            Box::new(|f| mib(f.rss)),
            "≤ 64 MiB".into(),
            Some(f.rss <= 64 << 20),
        ),
        (
            "  of which file-backed (the binary's code pages)".into(),
            Box::new(|f| mib(f.rss_file)),
            String::new(),
            None,
        ),
        (
            "operator peak RSS (VmHWM, incl. start-up)".into(),
            Box::new(|f| mib(f.peak_rss)),
            String::new(),
            None,
        ),
        (
            "API connections opened in the steady window".into(),
            Box::new(|f| f.connections_in_window.to_string()),
            "0".into(),
            Some(f.connections_in_window == 0),
        ),
        (
            "API connections opened since start / open now".into(),
            Box::new(|f| format!("{} / {}", f.connections_total, f.connections_open)),
            String::new(),
            None,
        ),
        (
            format!("routing ConfigMap, {n} × {} categories", size.categories),
            Box::new(|f| kib(f.table_bytes)),
            "< 1 MiB".into(),
            Some(f.table_bytes < 1 << 20),
        ),
    ];
    for (figure, value, target, met) in rows.drain(..) {
        report.rows.push(Row {
            figure,
            before: before.map(&value),
            measured: value(f),
            target,
            met,
        });
    }
    // The window is shorter than one round of status refreshes (the first come due minutes
    // after the instances turned Ready), so what they add in steady state is computed from
    // this build's rule for the bench's instances; the other build's rule is unknown here.
    let refreshes = refreshes_per_second(n);
    let with_refreshes = f.writes_per_second + refreshes;
    report.rows.push(Row {
        figure: "  status refreshes/s, computed (none fall in the window)".into(),
        before: None,
        measured: format!("{refreshes:.2}"),
        target: String::new(),
        met: None,
    });
    report.rows.push(Row {
        figure: "steady state: API writes/s with the refreshes".into(),
        before: None,
        measured: format!("{with_refreshes:.2}"),
        target: "≤ 5".into(),
        met: Some(with_refreshes <= 5.0),
    });
    // `a ×1, b ×2`, or `none` for an empty tally.
    fn tally<K: std::fmt::Display, N: std::fmt::Display>(
        counts: &BTreeMap<K, N>,
        none: &str,
    ) -> String {
        if counts.is_empty() {
            return none.to_owned();
        }
        counts
            .iter()
            .map(|(what, n)| format!("{what} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
    let breakdown = |f: &OperatorFigures| {
        let writes = f
            .writes
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}/s"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{writes}; Events in the window: {}; operator log in the window: {}",
            tally(&f.event_reasons, "none"),
            tally(&f.window_log, "no routing work")
        )
    };
    if let Some(b) = before {
        report
            .notes
            .push(format!("writes before: {}", breakdown(b)));
    }
    report.notes.push(format!("writes now: {}", breakdown(f)));
}

/// Status refreshes per second of `instances` unchanged RedisInstances named as this bench
/// names them, with the default `--status-refresh`, by this build's rule.
fn refreshes_per_second(instances: usize) -> f64 {
    use redis_fleet::operator::status_writes::{DEFAULT_REFRESH, fleet_refresh, refresh_interval};
    let base = fleet_refresh(DEFAULT_REFRESH, instances);
    (0..instances)
        .map(|i| 1.0 / refresh_interval(base, &format!("redis-{i:04}")).as_secs_f64())
        .sum()
}

async fn swarm_rows(report: &mut Report, servers: &[RedisServer], policy: &str, size: Size) {
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let mut probe = servers[0]
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let redis_pids: Vec<u32> = servers.iter().filter_map(RedisServer::pid).collect();
    let (calls0, usec0) = swarm::command_stats(&mut probe, "eval").await;
    let cpu: Vec<procstat::CpuMeter> = redis_pids
        .iter()
        .map(|p| procstat::CpuMeter::start(*p))
        .collect();
    // Every id once per 10 s keeps all of them live (15 s) at a tenth of the real rate; the
    // real rate's cost is the per-call cost times one call per sidecar per second.
    let period = Duration::from_secs(10);
    let t0 = Instant::now();
    let swarm = swarm::Swarm::start(&urls, policy, size.sidecars, 1, period).await;
    swarm.first_round().await;
    let fill = t0.elapsed();
    let (calls1, usec1) = swarm::command_stats(&mut probe, "eval").await;
    let redis_seconds: f64 = cpu.iter().map(procstat::CpuMeter::seconds).sum();
    let per_call = (usec1 - usec0) as f64 / (calls1 - calls0).max(1) as f64;
    let written = swarm.written.load(std::sync::atomic::Ordering::Relaxed);
    let errors = swarm.errors.load(std::sync::atomic::Ordering::Relaxed);

    // The converge check: every live sidecar and its version, on one instance.
    let mut times = Vec::new();
    let mut live = BTreeMap::new();
    for _ in 0..5 {
        let t = Instant::now();
        live = redis_fleet::redis::protocol::heartbeat::read(&mut probe, policy)
            .await
            .unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    let reply: usize = 8 + live
        .iter()
        .map(|(id, v)| id.len() + v.to_string().len() + 2 * 9)
        .sum::<usize>();
    let (rc0, ru0) = swarm::command_stats(&mut probe, "evalsha").await;
    redis_fleet::redis::protocol::heartbeat::read(&mut probe, policy)
        .await
        .unwrap();
    let (rc1, ru1) = swarm::command_stats(&mut probe, "evalsha").await;
    swarm.stop().await;

    let n = size.sidecars;
    report.add(
        &format!("{n} sidecars: heartbeats written (fill) / errors"),
        format!("{written} / {errors}"),
        "0 errors",
        Some(errors == 0),
    );
    report.add(
        "heartbeat write: Redis CPU per call",
        format!("{per_call:.1} µs"),
        "",
        None,
    );
    report.add(
        &format!("heartbeats at 1/s × {n}: one instance's CPU"),
        format!("{:.1} %", per_call * n as f64 / 1e4),
        "",
        None,
    );
    report.add(
        "swarm fill: all redis-servers' CPU per heartbeat",
        format!("{:.1} µs", redis_seconds * 1e6 / written.max(1) as f64),
        "",
        None,
    );
    report.add(
        &format!("converge check at {n}: live sidecars read"),
        live.len().to_string(),
        &n.to_string(),
        Some(live.len() == n),
    );
    report.add(
        &format!("converge check at {n}: time (median of 5)"),
        format!("{:.1} ms", times[2].as_secs_f64() * 1e3),
        "",
        None,
    );
    report.add(
        &format!("converge check at {n}: Redis CPU / reply"),
        format!(
            "{:.1} ms / {}",
            (ru1 - ru0) as f64 / (rc1 - rc0).max(1) as f64 / 1e3,
            kib(reply)
        ),
        "",
        None,
    );
    report.notes.push(format!(
        "swarm: {n} ids × {} redis-servers filled in {fill:.1?}; a real sidecar heartbeats every \
         instance of its table once a second, so a fleet of I instances takes {n} × I heartbeat \
         calls per second in total and {n} per instance",
        servers.len()
    ));
}

async fn watch_rows(report: &mut Report, cp: &ControlPlane, client: &Client, ns: &str, size: Size) {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = cms.get("scale-routing").await.unwrap();
    let rv = cm.resource_version().unwrap();
    let object_bytes = serde_json::to_vec(&cm).unwrap().len();
    let apiserver_pid = cp.apiserver_pid().unwrap();
    let (rss0, _) = procstat::memory(apiserver_pid);
    let upstream: SocketAddr = cp.server.trim_start_matches("https://").parse().unwrap();
    let t0 = Instant::now();
    let mut w = watchers::Watchers::start(
        size.watchers,
        upstream,
        &cp.ca_file(),
        ADMIN_TOKEN,
        ns,
        "scale-routing",
        &rv,
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    while w.established.load(std::sync::atomic::Ordering::Relaxed) < size.watchers
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let established = w.established.load(std::sync::atomic::Ordering::Relaxed);
    let setup = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss1, _) = procstat::memory(apiserver_pid);

    // Table updates: a tick annotation, merge-patched; each watcher reports when it sees it.
    let ticks: u32 = if size.watchers >= 1000 { 5 } else { 3 };
    let cpu = procstat::CpuMeter::start(apiserver_pid);
    let bytes0 = w.bytes.load(std::sync::atomic::Ordering::Relaxed);
    let mut fanout = Vec::new();
    for tick in 1..=u64::from(ticks) {
        let patch = serde_json::json!({"metadata": {"annotations": {watchers::TICK_ANNOTATION: tick.to_string()}}});
        let sent = Instant::now();
        cms.patch(
            "scale-routing",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        while got < established && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), w.seen.recv()).await {
                Ok(Some((t, at))) if t == tick => {
                    got += 1;
                    fanout.push(at.saturating_duration_since(sent));
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cpu_per_update = cpu.seconds() / f64::from(ticks);
    let bytes = w.bytes.load(std::sync::atomic::Ordering::Relaxed) - bytes0;
    w.stop();
    fanout.sort();
    let pct = |p: f64| {
        fanout
            .get(((fanout.len().max(1) - 1) as f64 * p).round() as usize)
            .map_or("-".to_owned(), |d| {
                format!("{:.0} ms", d.as_secs_f64() * 1e3)
            })
    };
    let n = size.watchers;
    report.add(
        &format!("{n} ConfigMap watches: established / in"),
        format!("{established} / {:.0} s", setup.as_secs_f64()),
        &n.to_string(),
        Some(established == n),
    );
    report.add(
        &format!("{n} watches: API server RSS added"),
        mib(rss1.saturating_sub(rss0)),
        "",
        None,
    );
    report.add(
        &format!("{n} watches: API server CPU per table update"),
        format!("{cpu_per_update:.2} s"),
        "",
        None,
    );
    report.add(
        &format!("{n} watches: bytes sent per table update"),
        mib(bytes / u64::from(ticks)),
        "",
        None,
    );
    report.add(
        &format!("{n} watches: update seen by all, p50 / p99"),
        format!("{} / {}", pct(0.5), pct(0.99)),
        "",
        None,
    );
    report.notes.push(format!(
        "watches: the routing ConfigMap is {} as JSON; each update sends it to every watcher",
        kib(object_bytes)
    ));
}
