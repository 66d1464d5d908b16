//! `redis-fleet-operator`: the controllers alone (`redis-fleet operator` with the same
//! arguments), on jemalloc. The chart's operator Deployment runs this binary.
//!
//! Why a binary of its own: the operator keeps a reflector cache of every RedisInstance,
//! CachePolicy, routing ConfigMap and Job it watches, plus a connection and history per
//! instance; its allocations are many small, long-lived objects rewritten as watches deliver
//! new versions. glibc's malloc leaves that heap fragmented (1 000 instances: ~60 MiB of
//! anonymous memory), jemalloc keeps it in about two thirds of that (`make bench-scale`). The
//! sidecar is the opposite case (short requests, a buffer per connection): there glibc was
//! faster per request and smaller at rest, so `redis-fleet` keeps the system allocator.

use clap::Parser;
use redis_fleet::operator::command::OperatorArgs;
use redis_fleet::telemetry::LogFormat;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Runs the RedisInstance and CachePolicy controllers (`redis-fleet operator`).
#[derive(Debug, Parser)]
#[command(name = "redis-fleet-operator", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "REDIS_FLEET_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(flatten)]
    args: OperatorArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    redis_fleet::operator::command::run(cli.args, cli.log_format)
}
