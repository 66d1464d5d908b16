//! The policy's credentials Secret (`<routing ConfigMap>-credentials`): a copy of every Secret
//! key the routing table references, as `<secret>.<key>`, so that an application mounts one
//! Secret under the sidecar's `--secrets-dir` and an instance added later with a Secret of its
//! own (by GitOps, say) needs no change to the application.
//!
//! It is written before the table that needs it is published ([`sync`] runs first in
//! [`super::apply::publish_routing`]), only when its content changes. A key whose Secret cannot
//! be read keeps its previous copy and is reported; values never reach logs, Events or status.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::api::FIELD_MANAGER;
use crate::api::cache_policy::{CachePolicy, credentials_secret_name};
use crate::operator::context::Context;
use crate::operator::secrets::Data;
use crate::redis::endpoint::{flat_name, referenced_secrets};
use crate::routing::table::{RoutingTable, SecretKeyName};

use super::Error;

/// What the credentials Secret should hold, and what could not be copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Data keys `<secret>.<key>` and their values.
    pub data: Data,
    /// Why some keys were not copied afresh (texts name Secrets and keys, never values).
    pub problems: Vec<String>,
}

/// The content of the credentials Secret for the keys in `wanted`, given what reading each
/// of them gave (`read`) and what the Secret held before (`previous`): a key that could not
/// be read keeps its previous copy; keys no longer wanted are dropped.
pub fn desired(
    wanted: &[SecretKeyName],
    read: &BTreeMap<SecretKeyName, Result<Vec<u8>, String>>,
    previous: &Data,
) -> Credentials {
    let mut data = Data::new();
    let mut problems = Vec::new();
    let mut owners: BTreeMap<String, &SecretKeyName> = BTreeMap::new();
    for key in wanted {
        let name = flat_name(key);
        if let Some(first) = owners.get(&name) {
            // `<secret>.<key>` is ambiguous when names contain dots: a.b/c and a/b.c.
            problems.push(format!(
                "Secret {} key {} and Secret {} key {} would both be {name}: only the first is copied",
                first.name, first.key, key.name, key.key
            ));
            continue;
        }
        owners.insert(name.clone(), key);
        match read.get(key) {
            Some(Ok(value)) => {
                data.insert(name, ByteString(value.clone()));
            }
            failure => {
                let why = match failure {
                    Some(Err(e)) => e.clone(),
                    _ => format!("Secret {} key {} was not read", key.name, key.key),
                };
                match previous.get(&name) {
                    Some(kept) => {
                        data.insert(name, kept.clone());
                        problems.push(format!("{why}; keeping the previous copy"));
                    }
                    None => problems.push(format!("{why}; no copy yet")),
                }
            }
        }
    }
    Credentials { data, problems }
}

/// Brings the credentials Secret of `policy` in step with `table`: reads every key the table
/// references and applies the Secret when its content differs from what it holds.
pub async fn sync(
    ctx: &Context,
    policy: &CachePolicy,
    namespace: &str,
    table: &RoutingTable,
) -> Result<(), Error> {
    let name = credentials_secret_name(policy);
    let failed = |source| Error::Credentials {
        name: name.clone(),
        source,
    };
    let previous = ctx.secrets.data(namespace, &name).await.map_err(failed)?;
    let wanted = referenced_secrets(table);
    let mut read = BTreeMap::new();
    for key in &wanted {
        let value = ctx
            .secrets
            .read(namespace, key)
            .await
            .map_err(|e| e.to_string());
        read.insert(key.clone(), value);
    }
    let next = desired(&wanted, &read, previous.as_ref().unwrap_or(&Data::new()));
    if !next.problems.is_empty() {
        report(ctx, policy, &name, &next.problems).await;
    }
    if previous.as_ref() == Some(&next.data) {
        return Ok(());
    }
    apply(ctx, policy, namespace, &name, next.data.clone())
        .await
        .map_err(failed)?;
    // Not read back until the re-read period ends: what was applied is what it holds.
    ctx.secrets.wrote(namespace, &name, next.data);
    info!(secret = %name, keys = wanted.len(), "updated the credentials Secret");
    Ok(())
}

/// Server-side apply of the Secret, owned by the policy.
async fn apply(
    ctx: &Context,
    policy: &CachePolicy,
    namespace: &str,
    name: &str,
    data: Data,
) -> Result<(), kube::Error> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(
                [
                    (
                        "app.kubernetes.io/managed-by".to_owned(),
                        "redis-fleet".to_owned(),
                    ),
                    ("redisfleet.io/policy".to_owned(), policy.name_any()),
                ]
                .into(),
            ),
            owner_references: policy.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    };
    let mut body = serde_json::to_value(&secret).map_err(kube::Error::SerdeError)?;
    body["apiVersion"] = json!("v1");
    body["kind"] = json!("Secret");
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Logs and records as a Warning Event what could not be copied.
async fn report(ctx: &Context, policy: &CachePolicy, name: &str, problems: &[String]) {
    let note = format!("credentials Secret {name}: {}", problems.join("; "));
    warn!(secret = %name, problems = %problems.join("; "), "credentials not copied");
    let event = Event {
        type_: EventType::Warning,
        reason: "CredentialsNotCopied".to_owned(),
        note: Some(note),
        action: "CopyCredentials".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
        warn!(error = %e, "recording an event failed");
    }
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

    fn data(items: &[(&str, &str)]) -> Data {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn every_wanted_key_is_copied_under_its_flat_name_and_others_are_dropped() {
        let wanted = [
            key("primary-redis", "password"),
            key("tertiary-redis", "password"),
        ];
        let read = BTreeMap::from([
            (wanted[0].clone(), Ok(b"p1".to_vec())),
            (wanted[1].clone(), Ok(b"p3".to_vec())),
        ]);
        let previous = data(&[("primary-redis.password", "old"), ("gone.password", "x")]);
        let next = desired(&wanted, &read, &previous);
        assert_eq!(
            next.data,
            data(&[
                ("primary-redis.password", "p1"),
                ("tertiary-redis.password", "p3")
            ])
        );
        assert!(next.problems.is_empty());
    }

    #[test]
    fn an_unreadable_key_keeps_its_previous_copy_and_is_reported_without_values() {
        let wanted = [
            key("primary-redis", "password"),
            key("new-redis", "password"),
        ];
        let read = BTreeMap::from([
            (
                wanted[0].clone(),
                Err("Secret shop/primary-redis not found".to_owned()),
            ),
            (
                wanted[1].clone(),
                Err("Secret shop/new-redis not found".to_owned()),
            ),
        ]);
        let previous = data(&[("primary-redis.password", "secret-value")]);
        let next = desired(&wanted, &read, &previous);
        assert_eq!(next.data, previous);
        assert_eq!(
            next.problems,
            [
                "Secret shop/primary-redis not found; keeping the previous copy",
                "Secret shop/new-redis not found; no copy yet",
            ]
        );
        assert!(next.problems.iter().all(|p| !p.contains("secret-value")));
    }

    #[test]
    fn two_keys_with_one_flat_name_copy_the_first_and_say_so() {
        let wanted = [key("a.b", "c"), key("a", "b.c")];
        let read = BTreeMap::from([
            (wanted[0].clone(), Ok(b"1".to_vec())),
            (wanted[1].clone(), Ok(b"2".to_vec())),
        ]);
        let next = desired(&wanted, &read, &Data::new());
        assert_eq!(next.data, data(&[("a.b.c", "1")]));
        assert_eq!(next.problems.len(), 1);
    }
}
