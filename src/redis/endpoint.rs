//! From an instance to a connection target, the one way every component does it: a
//! RedisInstance becomes an [`InstanceEndpoint`] (address, TLS and the *names* of its Secret
//! keys: what the routing table carries), and an endpoint plus the values of those keys
//! becomes a [`Target`] ([`target`]).
//!
//! Secret values come from wherever the component reads them ([`Secrets`]): the operator from
//! the API through its cache, the sidecar and the rebalance Job from mounted files or the API
//! ([`SecretSource`], [`read_secrets`]), read before the target is built.
//!
//! Mounted files come in two layouts, both read: each instance Secret mounted on its own
//! (`<dir>/<secret>/<key>`), or the one credentials Secret the operator keeps per policy
//! mounted whole (`<dir>/<secret>.<key>`, [`flat_name`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;

use crate::api::redis_instance::{
    REDIS_PORT, RedisInstance, SecretKeyRef, managed_host, password_ref,
};
use crate::routing::table::{InstanceEndpoint, RoutingTable, SecretKeyName, TlsSettings};

use super::connect::{Credentials, SecretString, Target, TlsOptions};

/// How an instance is reached, as written in the table (Secret names, never values).
pub fn endpoint_of(ri: &RedisInstance, namespace: &str) -> InstanceEndpoint {
    let name = ri.name_any();
    if let Some(m) = &ri.spec.managed {
        let pw = password_ref(&name, m);
        return InstanceEndpoint {
            host: managed_host(&name, namespace),
            port: REDIS_PORT,
            tls: None,
            username_secret: None,
            password_secret: Some(SecretKeyName {
                name: pw.name,
                key: pw.key,
            }),
        };
    }
    let secret = |r: &SecretKeyRef| SecretKeyName {
        name: r.name.clone(),
        key: r.key.clone(),
    };
    match &ri.spec.external {
        Some(e) => InstanceEndpoint {
            host: e.host.clone(),
            port: u16::try_from(e.port).unwrap_or(6379),
            tls: e.tls.as_ref().filter(|t| t.enabled).map(|t| TlsSettings {
                ca_secret: t.ca_secret_ref.as_ref().map(secret),
                insecure_skip_verify: t.insecure_skip_verify,
            }),
            username_secret: e.username_secret_ref.as_ref().map(secret),
            password_secret: e.password_secret_ref.as_ref().map(secret),
        },
        // Refused by the CRD rules; an empty target fails a probe with a clear message.
        None => InstanceEndpoint {
            host: String::new(),
            port: 0,
            tls: None,
            username_secret: None,
            password_secret: None,
        },
    }
}

/// Where the values of Secret keys come from while a target is built.
pub trait Secrets {
    /// Why a value could not be read (its text names the Secret and key, never the value).
    type Error;

    /// The bytes of `key`.
    fn read(
        &self,
        key: &SecretKeyName,
    ) -> impl Future<Output = Result<Vec<u8>, Self::Error>> + Send;

    /// The error for a value that must be text (a user name, a password) and is not UTF-8.
    fn not_text(&self, key: &SecretKeyName) -> Self::Error;
}

/// How to reach `endpoint`, with its credentials read from `secrets` (user name, password,
/// then CA, so the first missing one is the one reported).
pub async fn target<S: Secrets + Sync>(
    endpoint: &InstanceEndpoint,
    secrets: &S,
) -> Result<Target, S::Error> {
    let text = async |key: &SecretKeyName| {
        String::from_utf8(secrets.read(key).await?).map_err(|_| secrets.not_text(key))
    };
    let username = match &endpoint.username_secret {
        Some(key) => Some(text(key).await?),
        None => None,
    };
    let password = match &endpoint.password_secret {
        Some(key) => Some(SecretString::new(text(key).await?)),
        None => None,
    };
    let tls = match &endpoint.tls {
        Some(tls) => Some(TlsOptions {
            ca_pem: match &tls.ca_secret {
                Some(key) => Some(secrets.read(key).await?),
                None => None,
            },
            insecure_skip_verify: tls.insecure_skip_verify,
        }),
        None => None,
    };
    Ok(Target {
        host: endpoint.host.clone(),
        port: endpoint.port,
        tls,
        credentials: Credentials { username, password },
    })
}

/// Secret values by (Secret name, key), read ahead of building targets.
pub type SecretValues = BTreeMap<SecretKeyName, Vec<u8>>;

/// Values read ahead ([`read_secrets`]) for the instance `instance` of a table: a key that is
/// missing was not made available to this component.
#[derive(Debug, Clone, Copy)]
pub struct Available<'a> {
    /// The instance's name in the table (for error texts).
    pub instance: &'a str,
    /// The values read.
    pub values: &'a SecretValues,
}

impl Secrets for Available<'_> {
    type Error = String;

    async fn read(&self, key: &SecretKeyName) -> Result<Vec<u8>, String> {
        self.values.get(key).cloned().ok_or_else(|| {
            format!(
                "instance {}: Secret {} key {} is not available to the sidecar",
                self.instance, key.name, key.key
            )
        })
    }

    fn not_text(&self, key: &SecretKeyName) -> String {
        format!(
            "instance {}: Secret {} key {} is not text",
            self.instance, key.name, key.key
        )
    }
}

/// Every Secret key a table refers to.
pub fn referenced_secrets(table: &RoutingTable) -> Vec<SecretKeyName> {
    let mut out: Vec<SecretKeyName> = Vec::new();
    for e in table.instances.values() {
        out.extend(e.username_secret.iter().cloned());
        out.extend(e.password_secret.iter().cloned());
        if let Some(tls) = &e.tls {
            out.extend(tls.ca_secret.iter().cloned());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The name of `key`'s copy in a policy's credentials Secret, and so of its file where that
/// Secret is mounted: `<secret>.<key>` (Secret data keys allow `[-._a-zA-Z0-9]`, and so do
/// Secret names and keys).
pub fn flat_name(key: &SecretKeyName) -> String {
    format!("{}.{}", key.name, key.key)
}

/// Where the sidecar and the rebalance Job read credentials from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// Mounted Secrets: `<dir>/<secret name>/<key>`, else `<dir>/<secret name>.<key>` (the
    /// policy's credentials Secret mounted whole).
    Dir(PathBuf),
    /// Secrets read through the API, in this namespace.
    Api(String),
    /// No credentials (instances without AUTH).
    None,
}

/// Reads the values of `wanted` from `source`. A key with no file in either layout of a
/// directory is left out: building the target of the instance that needs it then fails with
/// the instance's name ([`Available`]).
pub async fn read_secrets(
    source: &SecretSource,
    client: Option<&kube::Client>,
    wanted: &[SecretKeyName],
) -> Result<SecretValues, String> {
    let mut out = SecretValues::new();
    match source {
        SecretSource::None => {}
        SecretSource::Dir(dir) => {
            for r in wanted {
                if let Some(v) = read_mounted(dir, r)? {
                    out.insert(r.clone(), v);
                }
            }
        }
        SecretSource::Api(namespace) => {
            let Some(client) = client else {
                return Err("no Kubernetes client to read Secrets with".to_owned());
            };
            let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
            // All at once: each read is bounded by the client, and so is the whole.
            let api = &api;
            let reads = wanted.iter().map(|r| async move {
                let secret = api
                    .get(&r.name)
                    .await
                    .map_err(|e| format!("reading Secret {}/{}: {e}", namespace, r.name))?;
                let value = secret
                    .data
                    .and_then(|mut d| d.remove(&r.key))
                    .ok_or_else(|| {
                        format!("Secret {}/{} has no key {}", namespace, r.name, r.key)
                    })?;
                Ok::<_, String>((r.clone(), value.0))
            });
            out.extend(futures::future::try_join_all(reads).await?);
        }
    }
    Ok(out)
}

/// The value of `key` under `dir`: `<dir>/<secret>/<key>`, else `<dir>/<secret>.<key>`;
/// `None` when neither file exists.
fn read_mounted(dir: &Path, key: &SecretKeyName) -> Result<Option<Vec<u8>>, String> {
    for path in [dir.join(&key.name).join(&key.key), dir.join(flat_name(key))] {
        match std::fs::read(&path) {
            Ok(v) => return Ok(Some(v)),
            // `<dir>/<secret>` may be a file of the other layout (NotADirectory).
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) => {}
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, key: &str) -> SecretKeyName {
        SecretKeyName {
            name: name.to_owned(),
            key: key.to_owned(),
        }
    }

    #[test]
    fn flat_names_join_secret_and_key_with_a_dot() {
        assert_eq!(
            flat_name(&key("tertiary-redis", "password")),
            "tertiary-redis.password"
        );
    }

    #[tokio::test]
    async fn a_directory_is_read_in_either_layout_and_a_missing_key_names_its_instance() {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::create_dir_all(dir.path().join("primary-redis")).expect("mkdir");
        std::fs::write(dir.path().join("primary-redis/password"), "p1").expect("write");
        std::fs::write(dir.path().join("tertiary-redis.password"), "p3").expect("write");
        let source = SecretSource::Dir(dir.path().to_owned());
        let wanted = [
            key("primary-redis", "password"),
            key("tertiary-redis", "password"),
            key("fourth-redis", "password"),
        ];
        let values = read_secrets(&source, None, &wanted).await.expect("read");
        assert_eq!(values.get(&wanted[0]).map(Vec::as_slice), Some(&b"p1"[..]));
        assert_eq!(values.get(&wanted[1]).map(Vec::as_slice), Some(&b"p3"[..]));
        assert!(!values.contains_key(&wanted[2]));

        let endpoint = InstanceEndpoint {
            host: "127.0.0.1".to_owned(),
            port: 6379,
            tls: None,
            username_secret: None,
            password_secret: Some(wanted[2].clone()),
        };
        let available = Available {
            instance: "fourth",
            values: &values,
        };
        let Err(error) = target(&endpoint, &available).await else {
            panic!("a target without its password");
        };
        assert_eq!(
            error,
            "instance fourth: Secret fourth-redis key password is not available to the sidecar"
        );
    }

    #[tokio::test]
    async fn the_per_secret_layout_wins_over_the_flat_one() {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::create_dir_all(dir.path().join("a")).expect("mkdir");
        std::fs::write(dir.path().join("a/password"), "nested").expect("write");
        std::fs::write(dir.path().join("a.password"), "flat").expect("write");
        let wanted = [key("a", "password")];
        let values = read_secrets(&SecretSource::Dir(dir.path().to_owned()), None, &wanted)
            .await
            .expect("read");
        assert_eq!(values[&wanted[0]], b"nested");
    }
}
