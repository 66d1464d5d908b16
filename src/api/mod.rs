//! The custom resources of redis-fleet (`redisfleet.io/v1alpha1`) and the value types they
//! share. Everything here is data: validation lives in the CRD schema (OpenAPI + CEL), so that
//! the API server refuses a bad object with a message naming the field.

pub mod cache_policy;
pub mod conditions;
pub mod duration;
pub mod quantity;
pub mod redis_instance;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use cache_policy::{CachePolicy, CachePolicySpec, CachePolicyStatus};
pub use duration::Duration;
pub use quantity::ByteSize;
pub use redis_instance::{InstancePhase, RedisInstance, RedisInstanceSpec, RedisInstanceStatus};

/// API group of the custom resources.
pub const GROUP: &str = "redisfleet.io";

/// Field manager for everything the operator writes with server-side apply.
pub const FIELD_MANAGER: &str = "redis-fleet";

/// Both CustomResourceDefinitions, in the order they are printed and applied.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![RedisInstance::crd(), CachePolicy::crd()]
}

/// The CRDs as a multi-document YAML stream: the content of `crds/` and of the chart's CRDs.
pub fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}
