//! Status conditions in the `metav1.Condition` shape, and the one rule for updating them:
//! `lastTransitionTime` moves only when `status` flips.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Condition, jiff::Timestamp};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Builds a condition; `status` true/false maps to "True"/"False".
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: Time(now),
    }
}

/// Replaces or inserts `new` in `conditions`, keeping the previous `lastTransitionTime`
/// when the status did not change, so that the time says when the condition last flipped.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            if existing.status == new.status {
                new.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = new;
        }
        None => conditions.push(new),
    }
}

/// The condition of the given type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of the given type is present and "True".
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// The schema of a `conditions` list: `metav1.Condition` with the bounds upstream declares
/// (`+kubebuilder:validation` markers that k8s-openapi's schema does not carry), so that the API
/// server refuses a malformed condition from any writer as it would for a built-in type.
pub fn schema(generator: &mut SchemaGenerator) -> Schema {
    let mut item = Condition::json_schema(generator);
    let bounds = [
        (
            "type",
            serde_json::json!({
                "maxLength": 316,
                "pattern": r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
            }),
        ),
        (
            "status",
            serde_json::json!({"enum": ["True", "False", "Unknown"]}),
        ),
        (
            "reason",
            serde_json::json!({
                "minLength": 1,
                "maxLength": 1024,
                "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
            }),
        ),
        ("message", serde_json::json!({"maxLength": 32768})),
        ("observedGeneration", serde_json::json!({"minimum": 0})),
    ];
    if let Some(properties) = item
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        for (field, extra) in bounds {
            let (Some(property), serde_json::Value::Object(extra)) =
                (properties.get_mut(field), extra)
            else {
                continue;
            };
            if let Some(property) = property.as_object_mut() {
                property.extend(extra);
            }
        }
    }
    json_schema!({
        "type": "array",
        "items": item,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut conds = vec![];
        set_condition(
            &mut conds,
            condition("Ready", true, "Probed", "ok", Some(1), at(10)),
        );
        set_condition(
            &mut conds,
            condition("Ready", true, "Probed", "still ok", Some(2), at(20)),
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, Time(at(10)));
        assert_eq!(conds[0].message, "still ok");
        assert_eq!(conds[0].observed_generation, Some(2));

        set_condition(
            &mut conds,
            condition("Ready", false, "Down", "gone", Some(2), at(30)),
        );
        assert_eq!(conds[0].last_transition_time, Time(at(30)));
        assert!(!is_true(&conds, "Ready"));

        set_condition(
            &mut conds,
            condition("Reachable", true, "Pong", "", None, at(40)),
        );
        assert_eq!(conds.len(), 2);
        assert!(is_true(&conds, "Reachable"));
        assert!(find(&conds, "Missing").is_none());
    }
}
