//! Finding the cluster the way `kubectl` does: `--kubeconfig FILE` (that file only), else
//! `KUBECONFIG` (several files merged) or `~/.kube/config`, else the in-cluster service
//! account; `--context NAME` instead of the current context. The views need no more than a
//! client, the namespace of the context and the server's URL for messages.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::Client;
use kube::config::{Config, KubeConfigOptions, Kubeconfig};

/// The flags that pick the cluster, as `kubectl`'s.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ClusterArgs {
    /// Path to the kubeconfig file to use (only this file: `KUBECONFIG` is then ignored).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// The name of the kubeconfig context to use, instead of the current one.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

/// Why no cluster could be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither an in-cluster service account nor a usable kubeconfig.
    #[error(
        "no Kubernetes cluster found (tried KUBECONFIG, ~/.kube/config and the in-cluster service account): {0}"
    )]
    NoCluster(String),
    /// The file given with `--kubeconfig` cannot be read.
    #[error("--kubeconfig {}: {message}", path.display())]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The kubeconfig (or the context asked for) is not usable.
    #[error("{}: {message}", context_hint(.context))]
    Context {
        /// The context asked for with `--context`, if any.
        context: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// The API server did not answer.
    #[error("cannot reach the Kubernetes API server at {server}: {message}")]
    Unreachable {
        /// Cluster URL.
        server: String,
        /// Cause.
        message: String,
    },
    /// The CRDs are not installed.
    #[error(
        "the redis-fleet resource types are not installed in this cluster (install them with `kubectl apply --server-side -f crds/`)"
    )]
    CrdsMissing,
}

/// What an API error says, and whether the request never got an answer (connection refused,
/// TLS, timeout) rather than a refusal.
pub fn api_message(e: &kube::Error) -> (String, bool) {
    match e {
        kube::Error::Api(status) if status.message.is_empty() => {
            (format!("HTTP {} {}", status.code, status.reason), false)
        }
        kube::Error::Api(status) => (status.message.clone(), false),
        other => (other.to_string(), true),
    }
}

fn context_hint(context: &Option<String>) -> String {
    match context {
        Some(name) => format!("kubeconfig context {name:?}"),
        None => "the kubeconfig's current context".to_owned(),
    }
}

/// A cluster connection.
#[derive(Clone)]
pub struct Cluster {
    /// The client.
    pub client: Client,
    /// The kubeconfig context's namespace (or the service account's); `default` when the
    /// context names none.
    pub default_namespace: String,
    /// The API server URL, for messages.
    pub server: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("default_namespace", &self.default_namespace)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Connects as `args` say, with timeouts so that an unreachable cluster fails instead of
/// hanging.
pub async fn connect(args: &ClusterArgs) -> Result<Cluster, Error> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let context_error = |e: kube::config::KubeconfigError| Error::Context {
        context: args.context.clone(),
        message: e.to_string(),
    };
    let mut config = match (&args.kubeconfig, &args.context) {
        (Some(path), _) => Config::from_custom_kubeconfig(read(path)?, &options)
            .await
            .map_err(context_error)?,
        // A context is a kubeconfig's: no falling back to the service account.
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(context_error)?,
        (None, None) => Config::infer()
            .await
            .map_err(|e| Error::NoCluster(e.to_string()))?,
    };
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(30));
    let default_namespace = config.default_namespace.clone();
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| Error::NoCluster(e.to_string()))?;
    Ok(Cluster {
        client,
        default_namespace,
        server,
    })
}

fn read(path: &Path) -> Result<Kubeconfig, Error> {
    Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig {
        path: path.to_owned(),
        message: e.to_string(),
    })
}
