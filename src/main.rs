//! The `redis-fleet` command: wiring only; the work lives in the library.

use std::io::Write;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Runs several Redis instances as one cache on Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "redis-fleet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (the content of `crds/`).
    Crds,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => {
            let yaml = redis_fleet::api::crds_yaml().context("rendering the CRDs as YAML")?;
            std::io::stdout().write_all(yaml.as_bytes())?;
        }
    }
    Ok(())
}
