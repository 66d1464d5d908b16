//! Reading credentials from Secrets referenced by RedisInstances, for the operator's
//! connections to them ([`SecretReader::target_of`]).
//!
//! The operator neither lists nor watches Secrets: RBAC cannot limit `list`/`watch` to some
//! Secrets (not by label, not by a name it does not know yet), and a list returns values, so
//! either verb would be read access to every Secret in scope. It `get`s the Secrets that
//! RedisInstances reference, by name, and keeps each one's data for [`DEFAULT_REREAD`] (the
//! operator's `--secret-reread`): a rotated password is picked up by the first probe after
//! that period, without a watch. A Secret that does not exist is not remembered (it is asked
//! for again at the next probe), so a Secret created after its instance is seen at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;

use crate::api::redis_instance::RedisInstance;
use crate::redis::connect::Target;
use crate::redis::endpoint::{self, Secrets, endpoint_of};
use crate::routing::table::SecretKeyName;

/// Why a credential could not be read. Messages name the Secret and key, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The Secret does not exist.
    #[error("Secret {namespace}/{name} not found")]
    NotFound {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
    },
    /// The Secret exists but lacks the key.
    #[error("Secret {namespace}/{name} has no key {key:?}")]
    MissingKey {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// Key.
        key: String,
    },
    /// The value is not UTF-8 (passwords and user names must be).
    #[error("Secret {namespace}/{name} key {key:?} is not UTF-8 text")]
    NotText {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// Key.
        key: String,
    },
    /// The API call failed.
    #[error("reading Secret {namespace}/{name}: {source}")]
    Api {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

impl SecretError {
    /// CamelCase reason for conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "SecretNotFound",
            Self::MissingKey { .. } => "SecretKeyMissing",
            Self::NotText { .. } => "SecretNotText",
            Self::Api { .. } => "SecretUnreadable",
        }
    }
}

/// A Secret's data, by key.
pub type Data = BTreeMap<String, ByteString>;

/// How long a Secret read is used before it is read again, unless the operator is told
/// otherwise (`--secret-reread`): the longest a rotated password goes unnoticed, plus one probe
/// interval. At N referenced Secrets it costs about N / this period GETs per second.
pub const DEFAULT_REREAD: Duration = Duration::from_secs(30);

/// Secret data by `(namespace, name)`, each kept for a period from when it was read. Pure (the
/// caller passes the time), so the re-read rule is tested without an API server.
#[derive(Debug, Clone, Default)]
pub struct Cache {
    entries: HashMap<(String, String), (Instant, Data)>,
}

impl Cache {
    /// The data of `key` read less than `max_age` before `now`; `None` when it was never read,
    /// is forgotten, or is due to be read again.
    pub fn fresh(&self, key: &(String, String), now: Instant, max_age: Duration) -> Option<&Data> {
        self.entries
            .get(key)
            .filter(|(read_at, _)| now.saturating_duration_since(*read_at) < max_age)
            .map(|(_, data)| data)
    }

    /// Records what reading `key` at `now` returned: the data, or `None` (not found), which is
    /// not kept.
    pub fn record(&mut self, key: (String, String), now: Instant, data: Option<Data>) {
        match data {
            Some(data) => {
                self.entries.insert(key, (now, data));
            }
            None => {
                self.entries.remove(&key);
            }
        }
    }

    /// Number of Secrets held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Secret data read by name (`get`, never `list`/`watch`), cached for a period ([`Cache`]).
pub struct SecretReader {
    client: Client,
    reread: Duration,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for SecretReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretReader").finish_non_exhaustive()
    }
}

impl SecretReader {
    /// A reader that reads a Secret again once its data is `reread` old.
    pub fn new(client: Client, reread: Duration) -> Self {
        Self {
            client,
            reread,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Address, TLS and credentials of an instance, reading the Secrets it references.
    pub async fn target_of(
        &self,
        ri: &RedisInstance,
        namespace: &str,
    ) -> Result<Target, SecretError> {
        endpoint::target(&endpoint_of(ri, namespace), &self.in_namespace(namespace)).await
    }

    /// The Secrets of `namespace`, to build targets from ([`endpoint::target`]).
    pub fn in_namespace<'a>(&'a self, namespace: &'a str) -> InNamespace<'a> {
        InNamespace {
            reader: self,
            namespace,
        }
    }

    /// The data of Secret `name` in `namespace`, from the cache while it is younger than the
    /// re-read period, else by a `get`; `None` when it does not exist.
    pub async fn data(&self, namespace: &str, name: &str) -> Result<Option<Data>, kube::Error> {
        let key = (namespace.to_owned(), name.to_owned());
        if let Some(data) = self.lock().fresh(&key, Instant::now(), self.reread) {
            return Ok(Some(data.clone()));
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let data = api.get_opt(name).await?.map(|s| s.data.unwrap_or_default());
        self.lock().record(key, Instant::now(), data.clone());
        Ok(data)
    }

    /// Records `data` as what Secret `name` in `namespace` holds now: the operator wrote it
    /// (the policies' credentials Secrets), so it need not read it back.
    pub fn wrote(&self, namespace: &str, name: &str, data: Data) {
        let key = (namespace.to_owned(), name.to_owned());
        self.lock().record(key, Instant::now(), Some(data));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bytes of `reference` in `namespace`.
    pub async fn read(
        &self,
        namespace: &str,
        reference: &SecretKeyName,
    ) -> Result<Vec<u8>, SecretError> {
        let data = self
            .data(namespace, &reference.name)
            .await
            .map_err(|source| SecretError::Api {
                namespace: namespace.to_owned(),
                name: reference.name.clone(),
                source,
            })?
            .ok_or_else(|| SecretError::NotFound {
                namespace: namespace.to_owned(),
                name: reference.name.clone(),
            })?;
        data.get(&reference.key)
            .map(|v| v.0.clone())
            .ok_or_else(|| SecretError::MissingKey {
                namespace: namespace.to_owned(),
                name: reference.name.clone(),
                key: reference.key.clone(),
            })
    }
}

/// The Secrets of one namespace, read through a [`SecretReader`].
#[derive(Debug, Clone, Copy)]
pub struct InNamespace<'a> {
    reader: &'a SecretReader,
    namespace: &'a str,
}

impl Secrets for InNamespace<'_> {
    type Error = SecretError;

    async fn read(&self, key: &SecretKeyName) -> Result<Vec<u8>, SecretError> {
        self.reader.read(self.namespace, key).await
    }

    fn not_text(&self, key: &SecretKeyName) -> SecretError {
        SecretError::NotText {
            namespace: self.namespace.to_owned(),
            name: key.name.clone(),
            key: key.key.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> (String, String) {
        ("shop".to_owned(), name.to_owned())
    }

    fn data(password: &str) -> Data {
        [(
            "password".to_owned(),
            ByteString(password.as_bytes().to_vec()),
        )]
        .into()
    }

    #[test]
    fn a_read_is_used_until_the_period_ends_then_read_again() {
        let period = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut cache = Cache::default();
        assert!(
            cache.fresh(&key("redis"), t0, period).is_none(),
            "never read"
        );
        cache.record(key("redis"), t0, Some(data("old")));
        for later in [0, 1, 29] {
            let now = t0 + Duration::from_secs(later);
            assert_eq!(cache.fresh(&key("redis"), now, period), Some(&data("old")));
        }
        // Due again: the caller reads it and gets the rotated value.
        let due = t0 + period;
        assert!(cache.fresh(&key("redis"), due, period).is_none());
        cache.record(key("redis"), due, Some(data("rotated")));
        assert_eq!(
            cache.fresh(&key("redis"), due + Duration::from_secs(29), period),
            Some(&data("rotated"))
        );
        assert!(cache.fresh(&key("other"), due, period).is_none());
        assert!(
            cache
                .fresh(&("elsewhere".to_owned(), "redis".to_owned()), due, period)
                .is_none(),
            "by namespace too"
        );
    }

    #[test]
    fn a_missing_secret_is_not_remembered_and_a_deleted_one_is_forgotten() {
        let period = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut cache = Cache::default();
        cache.record(key("later"), t0, None);
        assert!(cache.is_empty(), "asked for again at the next probe");
        cache.record(key("redis"), t0, Some(data("pw")));
        assert_eq!(cache.len(), 1);
        cache.record(key("redis"), t0 + period, None);
        assert!(cache.fresh(&key("redis"), t0 + period, period).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn a_clock_behind_the_read_counts_as_fresh() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut cache = Cache::default();
        cache.record(key("redis"), t0, Some(data("pw")));
        let earlier = t0 - Duration::from_secs(5);
        assert!(
            cache
                .fresh(&key("redis"), earlier, Duration::from_secs(1))
                .is_some()
        );
    }
}
