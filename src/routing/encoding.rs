//! The serialized forms of the routing table (its schemas), and how the table travels in its
//! ConfigMap. Pure: no I/O.
//!
//! - **Schema 1** is [`RoutingTable`] as plain JSON: every category lists its owners as
//!   `[start, end, "instance"]` runs. At 1 000 instances × 200 categories that is ~700 KB, and a
//!   ConfigMap holds at most 1 MiB.
//! - **Schema 2** is the same document with each category's owners as `"runs": [count,
//!   instance, count, instance, …]` — run lengths from slot 0 on, instances by their index in
//!   `instances` (in name order) — or, when a category has exactly the owners of an earlier
//!   one (categories of one tier are placed alike), `"slotsOf": <that category's index>`.
//!   Every other field is carried as in schema 1, so fields added to the table later need
//!   nothing here.
//!
//! In a ConfigMap, schema 1 is text in `data["routing.json"]` and schema 2 is gzip'ed in
//! `binaryData["routing.json"]` (the same key, so a mounted ConfigMap keeps its file name).
//! Readers take either ([`decode`] tells them apart by the gzip magic), so sidecars and Jobs
//! of this version read the tables of an operator of the previous one during an upgrade.

use std::collections::HashMap;
use std::io::Read;

use serde_json::{Value, json};

use super::slots::SLOT_COUNT;
use super::table::{RoutingTable, TableError};

/// The first schema: categories list `[start, end, "instance"]` runs.
pub const SCHEMA_V1: u32 = 1;

/// The compact schema: run lengths and instance indices, shared identical slot maps.
pub const SCHEMA_V2: u32 = 2;

/// The schemas this build reads.
pub const READABLE_SCHEMAS: [u32; 2] = [SCHEMA_V1, SCHEMA_V2];

/// The two bytes every gzip stream starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Largest table text accepted from a compressed document (a guard against a runaway
/// expansion, far above any real table: 5 000 instances × 200 categories are ~1.5 MB).
const MAX_TEXT: u64 = 64 << 20;

impl RoutingTable {
    /// Parses and validates `routing.json` in any schema this build reads.
    pub fn from_json(text: &str) -> Result<Self, TableError> {
        let table = from_json(text)?;
        table.validate()?;
        Ok(table)
    }

    /// Compact JSON in the table's `schema_version`, deterministic for equal tables.
    pub fn to_json(&self) -> String {
        to_json(self, self.schema_version)
    }
}

/// The table as JSON in `schema` (1; anything else is written as 2).
pub fn to_json(table: &RoutingTable, schema: u32) -> String {
    let text = if schema == SCHEMA_V1 {
        let mut t = table.clone();
        t.schema_version = SCHEMA_V1;
        serde_json::to_string(&t)
    } else {
        serde_json::to_string(&compact(table))
    };
    // Serialising plain data (maps with string keys) cannot fail.
    text.unwrap_or_default()
}

/// Parses a table in any readable schema (not yet validated).
pub fn from_json(text: &str) -> Result<RoutingTable, TableError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Header {
        schema_version: u32,
    }
    let json = |e: serde_json::Error| TableError::Json(e.to_string());
    let header: Header = serde_json::from_str(text).map_err(json)?;
    match header.schema_version {
        SCHEMA_V1 => serde_json::from_str(text).map_err(json),
        SCHEMA_V2 => {
            let document: Value = serde_json::from_str(text).map_err(json)?;
            serde_json::from_value(expand(document)?).map_err(json)
        }
        other => Err(TableError::UnsupportedSchema(other)),
    }
}

/// The table's text from a document's bytes: gzip is decompressed, anything else must be
/// UTF-8 JSON.
pub fn decode(bytes: &[u8]) -> Result<String, TableError> {
    if !bytes.starts_with(&GZIP_MAGIC) {
        return String::from_utf8(bytes.to_vec())
            .map_err(|_| TableError::Json("the routing table is neither gzip nor UTF-8".into()));
    }
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_TEXT)
        .read_to_string(&mut text)
        .map_err(|e| TableError::Json(format!("decompressing the routing table: {e}")))?;
    Ok(text)
}

/// `text` gzip'ed (best compression: a table is written rarely and read by every sidecar).
pub fn compress(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(text.as_bytes());
    encoder.finish().unwrap_or_default()
}

/// The schema-2 document of `table`.
fn compact(table: &RoutingTable) -> Value {
    let mut document = serde_json::to_value(table).unwrap_or(Value::Null);
    let index: HashMap<&str, usize> = table
        .instances
        .keys()
        .enumerate()
        .map(|(i, name)| (name.as_str(), i))
        .collect();
    let mut first_with: HashMap<Vec<usize>, usize> = HashMap::new();
    if let Some(categories) = document.get_mut("categories").and_then(Value::as_array_mut) {
        for (i, (category, value)) in table.categories.iter().zip(categories).enumerate() {
            // A category naming an instance the table lacks (an invalid table) keeps its
            // schema-1 runs; readers refuse it as they would in schema 1.
            let Some(runs) = category
                .slots
                .iter()
                .map(|o| Some([o.range.len() as usize, *index.get(o.instance.as_str())?]))
                .collect::<Option<Vec<[usize; 2]>>>()
            else {
                continue;
            };
            let runs: Vec<usize> = runs.into_iter().flatten().collect();
            let Some(object) = value.as_object_mut() else {
                continue;
            };
            object.remove("slots");
            match first_with.get(&runs) {
                Some(j) => {
                    object.insert("slotsOf".into(), json!(j));
                }
                None => {
                    object.insert("runs".into(), json!(runs));
                    first_with.insert(runs, i);
                }
            }
        }
    }
    document["schemaVersion"] = json!(SCHEMA_V2);
    document
}

/// The schema-1 shape of a schema-2 document (its `schemaVersion` kept).
fn expand(mut document: Value) -> Result<Value, TableError> {
    let bad = |what: String| TableError::Json(format!("schema 2: {what}"));
    let mut names: Vec<String> = document
        .get("instances")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    let Some(categories) = document.get_mut("categories").and_then(Value::as_array_mut) else {
        return Ok(document); // the typed parse reports what is missing
    };
    let mut expanded: Vec<Value> = Vec::with_capacity(categories.len());
    for (i, value) in categories.iter_mut().enumerate() {
        let Some(object) = value.as_object_mut() else {
            expanded.push(Value::Null);
            continue;
        };
        let slots = if let Some(runs) = object.remove("runs") {
            slots_of_runs(&runs, &names).map_err(|e| bad(format!("category {i}: {e}")))?
        } else if let Some(j) = object.remove("slotsOf") {
            let j = j
                .as_u64()
                .and_then(|j| usize::try_from(j).ok())
                .filter(|j| *j < i)
                .ok_or_else(|| {
                    bad(format!(
                        "category {i}: slotsOf must name an earlier category"
                    ))
                })?;
            expanded[j].clone()
        } else {
            object.get("slots").cloned().unwrap_or(Value::Null)
        };
        object.insert("slots".into(), slots.clone());
        expanded.push(slots);
    }
    Ok(document)
}

/// `[[start, end, name], …]` of `[count, index, …]`.
fn slots_of_runs(runs: &Value, names: &[String]) -> Result<Value, String> {
    let numbers = runs
        .as_array()
        .ok_or("runs must be an array")?
        .iter()
        .map(|n| n.as_u64().ok_or("runs must hold numbers"))
        .collect::<Result<Vec<u64>, _>>()?;
    if numbers.len() % 2 != 0 {
        return Err("runs must hold count, instance pairs".into());
    }
    let mut start = 0u64;
    let mut out = Vec::with_capacity(numbers.len() / 2);
    for pair in numbers.chunks_exact(2) {
        let (count, instance) = (pair[0], pair[1]);
        let name = usize::try_from(instance)
            .ok()
            .and_then(|i| names.get(i))
            .ok_or_else(|| format!("instance index {instance} is out of range"))?;
        if count == 0 || start + count > u64::from(SLOT_COUNT) {
            return Err(format!("a run of {count} slots from {start} is invalid"));
        }
        out.push(json!([start, start + count - 1, name]));
        start += count;
    }
    Ok(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::table::tests::two_instance_table;
    use crate::routing::table::{Category, Failover, SCHEMA_VERSION, SlotOwner, TtlRules};

    #[test]
    fn the_table_is_written_in_the_newest_schema() {
        assert_eq!(SCHEMA_VERSION, SCHEMA_V2);
    }

    #[test]
    fn both_schemas_are_read_into_the_same_table() {
        let mut table = two_instance_table();
        table.failover.push(Failover {
            category: "auth".into(),
            start: 0,
            end: 99,
            from: "primary".into(),
            to: "secondary".into(),
            handover: false,
        });
        let v1 = to_json(&table, 1);
        assert!(v1.contains(r#""schemaVersion":1"#), "{v1}");
        assert!(v1.contains(r#"[0,8191,"primary"]"#), "{v1}");
        let v2 = to_json(&table, 2);
        let from_v1 = RoutingTable::from_json(&v1).unwrap();
        let from_v2 = RoutingTable::from_json(&v2).unwrap();
        assert_eq!(from_v1.schema_version, 1);
        assert_eq!(from_v2.schema_version, 2);
        assert_eq!(
            RoutingTable {
                schema_version: 2,
                ..from_v1.clone()
            },
            from_v2
        );
        assert_eq!(from_v2, table);
        // Written back in the schema it was read in.
        assert_eq!(from_v1.to_json(), v1);
    }

    /// Three categories: two placed alike, one not.
    fn tiered() -> RoutingTable {
        let mut t = two_instance_table();
        let alike = |name: &str, prefix: &str| Category {
            name: name.into(),
            prefixes: vec![prefix.into()],
            ttl: TtlRules::default(),
            slots: vec![
                (0, 99, "secondary".to_owned()).into(),
                (100, 16383, "primary".to_owned()).into(),
            ],
            placement_basis: None,
            replication: None,
        };
        t.categories.insert(1, alike("menu", "menu:"));
        t.categories.insert(2, alike("user", "user:"));
        t
    }

    #[test]
    fn categories_placed_alike_share_their_runs() {
        let t = tiered();
        let v2: Value = serde_json::from_str(&to_json(&t, SCHEMA_V2)).unwrap();
        let cats = v2["categories"].as_array().unwrap();
        assert_eq!(cats[0]["runs"], json!([8192, 0, 8192, 1]));
        assert_eq!(cats[1]["runs"], json!([100, 1, 16284, 0]));
        assert_eq!(cats[2]["slotsOf"], json!(1));
        assert!(cats.iter().all(|c| c.get("slots").is_none()));
        assert_eq!(RoutingTable::from_json(&to_json(&t, SCHEMA_V2)).unwrap(), t);
    }

    #[test]
    fn compressed_documents_are_told_apart_from_text() {
        let t = tiered();
        for schema in READABLE_SCHEMAS {
            let text = to_json(&t, schema);
            assert_eq!(decode(text.as_bytes()).unwrap(), text);
            let packed = compress(&text);
            assert!(packed.len() < text.len());
            assert_eq!(decode(&packed).unwrap(), text);
        }
        assert!(decode(&[0xff, 0xfe]).is_err(), "neither gzip nor UTF-8");
        assert!(decode(&[0x1f, 0x8b, 1, 2, 3]).is_err(), "broken gzip");
    }

    #[test]
    fn broken_schema_2_documents_are_refused() {
        let t = tiered();
        let v2 = to_json(&t, SCHEMA_V2);
        let refused = |from: &str, to: &str| {
            let doc = v2.replacen(from, to, 1);
            assert_ne!(doc, v2, "{from}");
            RoutingTable::from_json(&doc).expect_err(&doc)
        };
        // An instance index out of range, a run past the last slot, an odd list, runs that
        // stop short, a reference forward.
        refused("[8192,0,8192,1]", "[8192,0,8192,7]");
        refused("[8192,0,8192,1]", "[8192,0,8193,1]");
        refused("[8192,0,8192,1]", "[8192,0,8192]");
        assert!(matches!(
            refused("[8192,0,8192,1]", "[8192,0,8191,1]"),
            TableError::SlotCoverage { .. }
        ));
        refused("\"slotsOf\":1", "\"slotsOf\":2");
    }

    #[test]
    fn a_category_naming_an_unknown_instance_keeps_its_runs_and_is_refused() {
        let mut t = two_instance_table();
        t.categories[0].slots[1] = SlotOwner::from((8192, 16383, "ghost".to_owned()));
        let v2 = to_json(&t, SCHEMA_V2);
        assert!(v2.contains("ghost"), "{v2}");
        assert!(matches!(
            RoutingTable::from_json(&v2),
            Err(TableError::UnknownInstance { .. })
        ));
    }
}
