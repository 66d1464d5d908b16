//! The `redis-fleet` command: wiring only; the work lives in the library.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use redis_fleet::telemetry::{self, LogFormat};

/// Runs several Redis instances as one cache on Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "redis-fleet", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "REDIS_FLEET_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controllers (RedisInstance, CachePolicy).
    Operator(redis_fleet::operator::command::OperatorArgs),
    /// Run the RESP proxy applications talk to (beside the application, on 127.0.0.1:6379).
    Sidecar(SidecarArgs),
    /// Move the data of one rebalance plan (run by the operator as a Job).
    Rebalance(RebalanceArgs),
    /// Print the CustomResourceDefinitions as YAML (the content of `crds/`).
    Crds,
    /// The views for people: `status`, `where` and `plan` (also `kubectl fleet status|where|plan`).
    #[command(flatten)]
    View(redis_fleet::cli::View),
}

#[derive(Debug, clap::Args)]
struct RebalanceArgs {
    /// The CachePolicy, as `namespace/name`.
    #[arg(long)]
    policy: String,
    /// The plan to carry out (`status.rebalance.planId`).
    #[arg(long)]
    plan: i64,
    /// Longest wait for the operator to publish the next routing table.
    #[arg(long, default_value = "10m", value_parser = redis_fleet::api::duration::parse_duration)]
    publish_timeout: std::time::Duration,
    /// This attempt of the plan (the operator passes it); default: the attempt in status.
    #[arg(long)]
    attempt: Option<i32>,
    /// Longest wait for every sidecar to use the migrating table; sidecars still behind then
    /// are fenced off the instances the plan moves data between.
    #[arg(long, default_value = "2m", value_parser = redis_fleet::api::duration::parse_duration)]
    converge_timeout: std::time::Duration,
    /// The pod name, for logs.
    #[arg(long, env = "POD_NAME")]
    owner: Option<String>,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("table").required(true).args(["routing_file", "configmap"])))]
struct SidecarArgs {
    /// The routing table as a file (the mounted routing ConfigMap's `routing.json`).
    #[arg(long, env = "REDIS_FLEET_ROUTING_FILE")]
    routing_file: Option<std::path::PathBuf>,
    /// The routing ConfigMap as `namespace/name`, read and watched through the API.
    #[arg(long, env = "REDIS_FLEET_CONFIGMAP")]
    configmap: Option<String>,
    /// Where applications connect.
    #[arg(long, default_value = "127.0.0.1:6379", env = "REDIS_FLEET_LISTEN")]
    listen: SocketAddr,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        default_value = "127.0.0.1:9121",
        env = "REDIS_FLEET_METRICS_ADDR"
    )]
    metrics_addr: SocketAddr,
    /// Mounted Secrets holding instance credentials: the policy's credentials Secret
    /// (`<dir>/<secret name>.<key>`) or each instance Secret (`<dir>/<secret name>/<key>`).
    /// Without it, `--configmap` mode reads the Secrets through the API.
    #[arg(long, env = "REDIS_FLEET_SECRETS_DIR")]
    secrets_dir: Option<std::path::PathBuf>,
    /// File holding a password clients must send with AUTH. Default: AUTH is accepted as is.
    #[arg(long, env = "REDIS_FLEET_CLIENT_PASSWORD_FILE")]
    client_password_file: Option<std::path::PathBuf>,
    /// This sidecar's id in heartbeats (default: the pod name or host name, plus a suffix).
    #[arg(long, env = "POD_NAME")]
    id: Option<String>,
    /// Pipelined connections per instance. One gives the deepest pipelines (the cheapest for
    /// Redis); more keep a very large request from delaying the others.
    #[arg(long, default_value_t = 1)]
    connections_per_instance: usize,
    /// A connection whose oldest request has waited this long is considered dead.
    #[arg(long, default_value = "5s", value_parser = redis_fleet::api::duration::parse_duration)]
    request_timeout: std::time::Duration,
    /// How often the table file and the credentials are re-read.
    #[arg(long, default_value = "1s", value_parser = redis_fleet::api::duration::parse_duration)]
    poll: std::time::Duration,
    /// Worker threads (1: a single-threaded event loop, like Redis itself).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Let FLUSHDB / FLUSHALL erase every application key of every instance (the fleet's own
    /// bookkeeping stays). Without it they are refused.
    #[arg(long, env = "REDIS_FLEET_ALLOW_FLUSH")]
    allow_flush: bool,
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    runtime.context("starting the async runtime")
}

fn sidecar(args: SidecarArgs) -> anyhow::Result<()> {
    use redis_fleet::redis::endpoint::SecretSource;
    use redis_fleet::sidecar::reload::TableSource;
    let table = match (args.routing_file, args.configmap) {
        (Some(path), _) => TableSource::File(path),
        (None, Some(cm)) => {
            let (namespace, name) = cm
                .split_once('/')
                .context("--configmap takes namespace/name")?;
            TableSource::ConfigMap {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }
        }
        (None, None) => anyhow::bail!("give --routing-file or --configmap"),
    };
    let secrets = match (&args.secrets_dir, &table) {
        (Some(dir), _) => SecretSource::Dir(dir.clone()),
        (None, TableSource::ConfigMap { namespace, .. }) => SecretSource::Api(namespace.clone()),
        (None, TableSource::File(_)) => SecretSource::None,
    };
    let client_password = match &args.client_password_file {
        Some(path) => Some(redis_fleet::redis::connect::SecretString::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?
                .trim_end_matches('\n')
                .to_owned(),
        )),
        None => None,
    };
    let id = args.id.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "sidecar".to_owned())
    });
    let mut suffix = [0u8; 3];
    let _ = getrandom::fill(&mut suffix);
    let id = format!("{id}-{:02x}{:02x}{:02x}", suffix[0], suffix[1], suffix[2]);
    let runtime = runtime(args.threads)?;
    runtime.block_on(redis_fleet::sidecar::run(redis_fleet::sidecar::Config {
        listen: args.listen,
        metrics_addr: args.metrics_addr,
        table,
        secrets,
        client_password,
        id,
        backend: redis_fleet::sidecar::backend::BackendOptions {
            lanes: args.connections_per_instance.max(1),
            request_timeout: args.request_timeout,
            ..Default::default()
        },
        poll: args.poll,
        allow_flush: args.allow_flush,
    }))?;
    Ok(())
}

/// A view (`status`, `where`), printed to stdout.
fn view(view: redis_fleet::cli::View) -> anyhow::Result<()> {
    install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let (width, color) = (
        redis_fleet::cli::width_from_env(),
        redis_fleet::cli::color_from_env(),
    );
    let text = runtime.block_on(view.run(width, color))?;
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Called as `kubectl-fleet` (by kubectl, for `kubectl fleet …`): the views only.
    if args
        .first()
        .is_some_and(|argv0| redis_fleet::cli::invoked_as_plugin(argv0))
    {
        return view(redis_fleet::cli::Plugin::parse_from(args).view);
    }
    let cli = Cli::parse_from(args);
    match cli.command {
        Command::View(v) => view(v),
        Command::Sidecar(args) => {
            telemetry::init(cli.log_format, "info");
            install_crypto_provider();
            sidecar(args)
        }
        Command::Rebalance(args) => {
            telemetry::init(cli.log_format, "info");
            install_crypto_provider();
            let (namespace, policy) = args
                .policy
                .split_once('/')
                .context("--policy takes namespace/name")?;
            let owner = args.owner.unwrap_or_else(|| {
                let mut b = [0u8; 4];
                let _ = getrandom::fill(&mut b);
                format!("rebalance-{:08x}", u32::from_le_bytes(b))
            });
            let runtime = runtime(2)?;
            runtime.block_on(redis_fleet::rebalance::migrate::run(
                redis_fleet::rebalance::migrate::Config {
                    namespace: namespace.to_owned(),
                    policy: policy.to_owned(),
                    plan_id: args.plan,
                    attempt: args.attempt,
                    owner,
                    publish_timeout: args.publish_timeout,
                    converge_timeout: args.converge_timeout,
                },
            ))?;
            Ok(())
        }
        Command::Crds => {
            let yaml = redis_fleet::api::crds_yaml().context("rendering the CRDs as YAML")?;
            std::io::stdout().write_all(yaml.as_bytes())?;
            Ok(())
        }
        Command::Operator(args) => redis_fleet::operator::command::run(args, cli.log_format),
    }
}

/// rustls needs one process-wide crypto provider; ring is the one compiled in.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
