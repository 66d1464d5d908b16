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
    Operator(OperatorArgs),
    /// Print the CustomResourceDefinitions as YAML (the content of `crds/`).
    Crds,
}

#[derive(Debug, clap::Args)]
struct OperatorArgs {
    /// Namespace to watch; repeat for several. Default: all namespaces.
    #[arg(
        long = "namespace",
        short = 'n',
        env = "REDIS_FLEET_NAMESPACES",
        value_delimiter = ','
    )]
    namespaces: Vec<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080", env = "REDIS_FLEET_METRICS_ADDR")]
    metrics_addr: SocketAddr,
    /// Name of this operator replica on Events (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    instance_name: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => {
            let yaml = redis_fleet::api::crds_yaml().context("rendering the CRDs as YAML")?;
            std::io::stdout().write_all(yaml.as_bytes())?;
            Ok(())
        }
        Command::Operator(args) => {
            telemetry::init(cli.log_format, "info,kube=warn,kube_runtime=warn");
            install_crypto_provider();
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(redis_fleet::operator::run(redis_fleet::operator::Config {
                namespaces: args.namespaces,
                metrics_addr: args.metrics_addr,
                controller_name: "redis-fleet-operator".to_owned(),
                instance_name: args.instance_name,
            }))?;
            Ok(())
        }
    }
}

/// rustls needs one process-wide crypto provider; ring is the one compiled in.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
