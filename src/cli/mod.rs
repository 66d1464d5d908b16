//! Command-line views for people at a terminal (as opposed to the long-running components),
//! subcommands of `redis-fleet` and, when the binary is called `kubectl-fleet`, of the
//! kubectl plugin `kubectl fleet`:
//!
//! - [`status`]: a terminal (or JSON) view of a namespace, of every namespace or of a policy;
//! - [`where_key`]: which category, slot and instance keys live on, and whether they move;
//! - [`plan`]: what a rebalance would move now (or after a what-if: an instance added, one
//!   drained, another threshold), changing nothing;
//! - [`cluster`]: the kubectl-style flags that pick the cluster (`--kubeconfig`, `--context`);
//! - `term`: the terminal kit (width, colors, tables, wrapping, bars).

pub mod cluster;
pub mod plan;
pub mod status;
mod term;
pub mod where_key;

use std::ffi::OsStr;
use std::path::Path;

pub use term::{FALLBACK_WIDTH, Output, color_from_env, width, width_from_env};

/// The executable name under which the binary is the kubectl plugin `kubectl fleet` (kubectl
/// runs `kubectl-<name>` found on `PATH` for `kubectl <name>`).
pub const PLUGIN_EXECUTABLE: &str = "kubectl-fleet";

/// `-o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// For people: aligned columns (and, for `status`, usage bars).
    #[default]
    Table,
    /// The same content as pretty-printed JSON, with a `schemaVersion`.
    Json,
}

/// The views: subcommands of both `redis-fleet` and `kubectl fleet`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum View {
    /// Show a namespace's fleet or one policy: instances, usage, categories, routing, rebalances.
    Status(status::StatusArgs),
    /// Show which category, slot and instance keys live on now, and whether they are migrating.
    Where(where_key::WhereArgs),
    /// Show what a rebalance would move now, or after a what-if, without changing anything.
    Plan(plan::PlanArgs),
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
    /// From `plan`.
    #[error(transparent)]
    Plan(#[from] plan::Error),
}

impl View {
    /// Runs the view; returns what to print. `width` is the terminal's (`None`: no wrapping),
    /// `color` whether to use ANSI colors.
    pub async fn run(&self, width: Option<usize>, color: bool) -> Result<String, Error> {
        match self {
            View::Status(args) => Ok(status::run(args, width, color).await?),
            View::Where(args) => Ok(where_key::run(args).await?),
            View::Plan(args) => Ok(plan::run(args, width, color).await?),
        }
    }
}

/// `kubectl fleet`: the views alone, for the binary run as `kubectl-fleet`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Parser)]
#[command(
    name = PLUGIN_EXECUTABLE,
    bin_name = "kubectl fleet",
    version,
    about = "redis-fleet's views as a kubectl plugin: the fleet's status, where keys live, and what a rebalance would move."
)]
pub struct Plugin {
    /// The view.
    #[command(subcommand)]
    pub view: View,
}

/// Whether the process was started as the kubectl plugin: the file name of `argv[0]` is
/// `kubectl-fleet` (kubectl passes the plugin's path as `argv[0]`; a link of that name to
/// `redis-fleet` does the same).
pub fn invoked_as_plugin(argv0: &OsStr) -> bool {
    let Some(name) = Path::new(argv0).file_name().map(Path::new) else {
        return false;
    };
    // `kubectl-fleet.exe` on Windows.
    let stem = match name.extension() {
        Some(ext) if ext.eq_ignore_ascii_case("exe") => name.file_stem(),
        _ => Some(name.as_os_str()),
    };
    stem == Some(OsStr::new(PLUGIN_EXECUTABLE))
}

#[cfg(test)]
mod tests;
