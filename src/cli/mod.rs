//! Command-line views for people at a terminal (as opposed to the long-running components),
//! subcommands of `redis-fleet`:
//!
//! - [`status`]: a terminal (or JSON) view of a namespace, of every namespace or of a policy;
//! - [`where_key`]: which category, slot and instance keys live on, and whether they move;
//! - [`cluster`]: the kubectl-style flags that pick the cluster (`--kubeconfig`, `--context`);
//! - `term`: the terminal kit (width, colors, tables, wrapping, bars).

pub mod cluster;
pub mod status;
mod term;
pub mod where_key;

pub use term::{FALLBACK_WIDTH, Output, color_from_env, width, width_from_env};

/// `-o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// For people: aligned columns (and, for `status`, usage bars).
    #[default]
    Table,
    /// The same content as pretty-printed JSON, with a `schemaVersion`.
    Json,
}

/// The views: subcommands of `redis-fleet`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum View {
    /// Show a namespace's fleet or one policy: instances, usage, categories, routing, rebalances.
    Status(status::StatusArgs),
    /// Show which category, slot and instance keys live on now, and whether they are migrating.
    Where(where_key::WhereArgs),
}

/// Why a view could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From `status`.
    #[error(transparent)]
    Status(#[from] status::Error),
    /// From `where`.
    #[error(transparent)]
    Where(#[from] where_key::Error),
}

impl View {
    /// Runs the view; returns what to print. `width` is the terminal's (`None`: no wrapping),
    /// `color` whether to use ANSI colors.
    pub async fn run(&self, width: Option<usize>, color: bool) -> Result<String, Error> {
        match self {
            View::Status(args) => Ok(status::run(args, width, color).await?),
            View::Where(args) => Ok(where_key::run(args).await?),
        }
    }
}
