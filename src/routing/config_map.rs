//! The routing table in its ConfigMap (pure: the object is already fetched): the key
//! `routing.json`, as text in `data` (schema 1) or gzip'ed in `binaryData` (schema 2, see
//! [`super::encoding`]); the version also an annotation. The operator writes it with
//! [`contents`]; the operator, the sidecar, the rebalance Job and `redis-fleet status` all read
//! it with [`table_of`] or [`table_text`].

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;

use super::encoding::{self, SCHEMA_V1};
use super::table::{RoutingTable, TABLE_KEY, TableError, VERSION_ANNOTATION};

/// The text of the table, if the ConfigMap has one (decompressed from `binaryData`).
pub fn table_text(cm: &ConfigMap) -> Option<Result<Cow<'_, str>, TableError>> {
    if let Some(text) = cm.data.as_ref().and_then(|d| d.get(TABLE_KEY)) {
        return Some(Ok(Cow::Borrowed(text.as_str())));
    }
    let bytes = cm.binary_data.as_ref()?.get(TABLE_KEY)?;
    Some(encoding::decode(&bytes.0).map(Cow::Owned))
}

/// The table: `None` when the ConfigMap has none, else the table or why it cannot be read.
pub fn table_of(cm: &ConfigMap) -> Option<Result<RoutingTable, TableError>> {
    table_text(cm).map(|text| text.and_then(|t| RoutingTable::from_json(&t)))
}

/// What a ConfigMap's `data` and `binaryData` hold for `table` in `schema`: schema 1 as text
/// in `data`, schema 2 gzip'ed in `binaryData`, under the same key.
pub type Contents = (
    Option<BTreeMap<String, String>>,
    Option<BTreeMap<String, ByteString>>,
);

/// The ConfigMap contents of `table` written in `schema`.
pub fn contents(table: &RoutingTable, schema: u32) -> Contents {
    let text = encoding::to_json(table, schema);
    if schema == SCHEMA_V1 {
        (Some(BTreeMap::from([(TABLE_KEY.to_owned(), text)])), None)
    } else {
        let bytes = ByteString(encoding::compress(&text));
        (None, Some(BTreeMap::from([(TABLE_KEY.to_owned(), bytes)])))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::table::tests::two_instance_table;

    #[test]
    fn both_schemas_travel_under_the_same_key() {
        let table = two_instance_table();
        for (schema, in_data) in [(1, true), (2, false)] {
            let (data, binary_data) = contents(&table, schema);
            assert_eq!(data.is_some(), in_data);
            assert_eq!(binary_data.is_some(), !in_data);
            let cm = ConfigMap {
                data,
                binary_data,
                ..ConfigMap::default()
            };
            let read = table_of(&cm).unwrap().unwrap();
            assert_eq!(read.schema_version, schema);
            assert_eq!(read.content_hash(), table.content_hash());
        }
        assert!(table_of(&ConfigMap::default()).is_none());
        let broken = ConfigMap {
            binary_data: Some(BTreeMap::from([(
                TABLE_KEY.to_owned(),
                ByteString(vec![0x1f, 0x8b, 0]),
            )])),
            ..ConfigMap::default()
        };
        assert!(matches!(table_of(&broken), Some(Err(TableError::Json(_)))));
    }
}
