//! Reading credentials from Secrets referenced by RedisInstances, for the operator's
//! connections to them ([`SecretReader::target_of`]).
//!
//! The operator watches Secret *metadata* only (cheap: no data of unrelated Secrets in
//! memory) and fetches a referenced Secret's data when its resourceVersion changes, so a
//! rotated password is picked up at the next probe without polling the API.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

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

/// Cached Secret data, refreshed when the watched resourceVersion moves.
pub struct SecretReader {
    client: Client,
    metadata: Store<PartialObjectMeta<Secret>>,
    cache: Mutex<HashMap<(String, String), (String, Data)>>,
}

impl std::fmt::Debug for SecretReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretReader").finish_non_exhaustive()
    }
}

impl SecretReader {
    /// A reader using `metadata` (a reflector of Secret metadata) to detect changes.
    pub fn new(client: Client, metadata: Store<PartialObjectMeta<Secret>>) -> Self {
        Self {
            client,
            metadata,
            cache: Mutex::new(HashMap::new()),
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

    /// The data of Secret `name` in `namespace` (from the cache while its resourceVersion has
    /// not moved); `None` when it does not exist.
    pub async fn data(&self, namespace: &str, name: &str) -> Result<Option<Data>, kube::Error> {
        let key = (namespace.to_owned(), name.to_owned());
        let watched_version = self
            .metadata
            .get(&ObjectRef::new(name).within(namespace))
            .and_then(|m| m.resource_version());
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.get(&key).cloned()
        };
        if let (Some((version, data)), Some(watched)) = (cached, watched_version)
            && version == watched
        {
            return Ok(Some(data));
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let Some(secret) = api.get_opt(name).await? else {
            self.forget(&key);
            return Ok(None);
        };
        let version = secret.resource_version().unwrap_or_default();
        let data = secret.data.unwrap_or_default();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert(key, (version, data.clone()));
        Ok(Some(data))
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

    fn forget(&self, key: &(String, String)) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.remove(key);
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
