//! Command-line views for people at a terminal (as opposed to the long-running components):
//!
//! - [`status`]: a terminal (or JSON) view of a namespace, of every namespace or of a policy;
//! - [`cluster`]: the kubectl-style flags that pick the cluster (`--kubeconfig`, `--context`);
//! - `term`: the terminal kit (width, colors, tables, wrapping, bars).

pub mod cluster;
pub mod status;
mod term;

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
