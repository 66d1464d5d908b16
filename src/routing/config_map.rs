//! Reading the routing table out of a routing ConfigMap (pure: the object is already fetched):
//! the table is its `routing.json` key, the version also an annotation. The operator, the
//! sidecar, the rebalance Job and `redis-fleet status` all read it this way.

use k8s_openapi::api::core::v1::ConfigMap;

use super::table::{RoutingTable, TABLE_KEY, TableError, VERSION_ANNOTATION};

/// The text of the table, if the ConfigMap has one.
pub fn table_text(cm: &ConfigMap) -> Option<&str> {
    cm.data.as_ref()?.get(TABLE_KEY).map(String::as_str)
}

/// The table: `None` when the ConfigMap has none, else the table or why it cannot be read.
pub fn table_of(cm: &ConfigMap) -> Option<Result<RoutingTable, TableError>> {
    table_text(cm).map(RoutingTable::from_json)
}

/// The version annotation, when it is a number.
pub fn annotated_version(cm: &ConfigMap) -> Option<u64> {
    cm.metadata
        .annotations
        .as_ref()?
        .get(VERSION_ANNOTATION)?
        .parse()
        .ok()
}
