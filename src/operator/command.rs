//! The operator's command line (`redis-fleet operator`, and the `redis-fleet-operator`
//! binary the chart runs) and its process: logging, the async runtime, the controllers.
//!
//! Two binaries parse these arguments: `redis-fleet` (every command, the system allocator)
//! and `redis-fleet-operator` (this command alone, linked with jemalloc, which keeps the
//! controllers' caches in about two thirds of the memory glibc's allocator needs; the sidecar
//! is faster and smaller on glibc, so the allocator is chosen per binary).

use std::net::SocketAddr;

use anyhow::Context;

use crate::telemetry::{self, LogFormat};

#[derive(Debug, clap::Args)]
pub struct OperatorArgs {
    /// Namespace to watch; repeat for several. Default: all namespaces.
    #[arg(
        long = "namespace",
        short = 'n',
        env = "REDIS_FLEET_NAMESPACES",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080", env = "REDIS_FLEET_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,
    /// Name of this operator replica on Events (the pod name in a cluster); also its
    /// leader-election identity (default: the host name with a random suffix).
    #[arg(long, env = "POD_NAME")]
    pub instance_name: Option<String>,
    /// Run the controllers only while holding the leader Lease (for more than one replica).
    #[arg(long, env = "REDIS_FLEET_LEADER_ELECTION")]
    pub leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = super::leader::DEFAULT_LEASE_NAME)]
    pub lease_name: String,
    /// Namespace of the leader Lease. Default: the service account's namespace, else `default`.
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How long the Lease stays valid after a renewal; the leader renews every third of it,
    /// a standby looks every sixth.
    #[arg(long, default_value = "15s", value_parser = super::leader::parse_lease_duration)]
    pub lease_duration: std::time::Duration,
    /// Image of rebalance Jobs (normally the operator's own image).
    #[arg(
        long,
        env = "REDIS_FLEET_IMAGE",
        default_value = "ghcr.io/redis-fleet/redis-fleet:0.1.0"
    )]
    pub rebalance_image: String,
    /// Pull policy of that image.
    #[arg(long, env = "REDIS_FLEET_IMAGE_PULL_POLICY")]
    pub rebalance_image_pull_policy: Option<String>,
    /// Namespace of rebalance Jobs. Default: the policy's namespace (the Job is then owned by
    /// the policy).
    #[arg(long, env = "REDIS_FLEET_REBALANCE_NAMESPACE")]
    pub rebalance_namespace: Option<String>,
    /// ServiceAccount of rebalance Jobs.
    #[arg(long, env = "REDIS_FLEET_REBALANCE_SERVICE_ACCOUNT")]
    pub rebalance_service_account: Option<String>,
    /// How long a rebalance Job waits for every sidecar to load the table that announces a
    /// migration, and a new replica's seeding for every sidecar to load the table that names
    /// it (a sidecar behind that long no longer holds seedings back); sidecars still behind
    /// then are fenced off the instances the data moves between, or the range's writer and
    /// replica (their clients get -TRYAGAIN there until the sidecar has a newer table).
    #[arg(long, default_value = "2m", value_parser = crate::api::duration::parse_duration, env = "REDIS_FLEET_REBALANCE_CONVERGE_TIMEOUT")]
    pub rebalance_converge_timeout: std::time::Duration,
    /// Scheduling and resources of rebalance Jobs' pods, a JSON object with any of
    /// `resources`, `nodeSelector`, `tolerations` and `priorityClassName` (Kubernetes' own
    /// shapes). Absent: 100m CPU and 64Mi requested, 512Mi memory limit, no placement.
    #[arg(long, value_parser = parse_job_pod, env = "REDIS_FLEET_REBALANCE_POD")]
    pub rebalance_pod: Option<Box<super::cache_policy::job::JobPod>>,
    /// How often an unchanged status is rewritten (each object's interval is stretched by up
    /// to a quarter). Changes of phase, conditions and memory (by a point of capacity) are
    /// written at once; live figures are in the metrics. N instances cost about N / this
    /// interval writes per second, and never much more than one: a fleet of more instances
    /// than this interval has seconds refreshes each every N seconds instead.
    #[arg(long, default_value = "5m", value_parser = crate::api::duration::parse_duration, env = "REDIS_FLEET_STATUS_REFRESH")]
    pub status_refresh: std::time::Duration,
    /// How long the data of a Secret a RedisInstance references is used before it is read
    /// again (by name: the operator neither lists nor watches Secrets). A rotated password is
    /// noticed within this period plus one probe interval; N referenced Secrets cost about
    /// N / this period GETs per second.
    #[arg(long, default_value = "30s", value_parser = crate::api::duration::parse_duration, env = "REDIS_FLEET_SECRET_REREAD")]
    pub secret_reread: std::time::Duration,
    /// Schema of the routing tables published: 2 (compact, gzip'ed in the ConfigMap's
    /// binaryData) or 1 (plain JSON, for sidecars and Jobs older than 0.2 during an upgrade;
    /// it stops fitting a ConfigMap near 1 400 instances × 200 categories).
    #[arg(long, default_value_t = crate::routing::SCHEMA_VERSION, value_parser = clap::value_parser!(u32).range(1..=2), env = "REDIS_FLEET_ROUTING_SCHEMA")]
    pub routing_schema: u32,
}

/// Runs the controllers until SIGTERM or SIGINT (see [`super::run`]).
pub fn run(args: OperatorArgs, log_format: LogFormat) -> anyhow::Result<()> {
    telemetry::init(log_format, "info,kube=warn,kube_runtime=warn");
    // rustls needs one process-wide crypto provider; ring is the one compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One worker thread, whatever the node's size: the controllers run on this thread (in
    // `block_on`), the worker carries the connections' tasks. `Runtime::new()` starts one
    // worker per core, and each thread's allocations fragment on their own (glibc gives each
    // its own arena): at 1 000 instances on 2 cores, one worker instead of two took the steady
    // RSS from ~108 to 91 MiB and the CPU from ~0.15 to 0.13 core (`make bench-scale`, glibc).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(super::run(super::Config {
        namespaces: args.namespaces,
        metrics_addr: args.metrics_addr,
        controller_name: "redis-fleet-operator".to_owned(),
        instance_name: args.instance_name,
        jobs: super::cache_policy::job::JobSettings {
            namespace: args.rebalance_namespace,
            image: args.rebalance_image,
            pull_policy: args.rebalance_image_pull_policy,
            service_account: args.rebalance_service_account,
            // One pod per attempt: a retry is a new Job with a new mover token.
            backoff_limit: 0,
            converge_timeout: args.rebalance_converge_timeout,
            pod: args.rebalance_pod.map(|p| *p).unwrap_or_default(),
        },
        status_refresh: args.status_refresh,
        routing_schema: args.routing_schema,
        secret_reread: args.secret_reread,
        leader_election: args
            .leader_election
            .then_some(super::leader::ElectionConfig {
                lease_name: args.lease_name,
                lease_namespace: args.lease_namespace,
                lease_duration: args.lease_duration,
            }),
    }))?;
    Ok(())
}

// Boxed: the settings are several times the size of the other arguments.
fn parse_job_pod(s: &str) -> Result<Box<super::cache_policy::job::JobPod>, String> {
    super::cache_policy::job::JobPod::from_json(s)
        .map(Box::new)
        .map_err(|e| {
            format!(
                "not a JSON object of resources, nodeSelector, tolerations, priorityClassName: {e}"
            )
        })
}
