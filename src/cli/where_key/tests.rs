//! `where` on a hand-built routing table: a key on its owner, one whose owner is failed over,
//! one whose range migrates; hash tags; the table read out of its ConfigMap in both schemas;
//! the table and JSON a user sees; which policy is read.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::*;
use crate::routing::config_map::contents;
use crate::routing::key_slot;
use crate::routing::table::{
    Category, Failover, InstanceEndpoint, Migration, RoutingTable, TtlRules,
};

fn endpoint(port: u16) -> InstanceEndpoint {
    InstanceEndpoint {
        host: "10.0.0.1".into(),
        port,
        tls: None,
        username_secret: None,
        password_secret: None,
    }
}

fn category(name: &str, prefixes: &[&str], slots: &[(u16, u16, &str)]) -> Category {
    Category {
        name: name.into(),
        prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
        ttl: TtlRules::default(),
        slots: slots
            .iter()
            .map(|(start, end, owner)| (*start, *end, (*owner).to_owned()).into())
            .collect(),
        placement_basis: None,
        replication: None,
    }
}

/// Three instances; `auth` split between primary and secondary, `user` on secondary, the rest
/// on tertiary. Primary is down (auth 0-8191 fails over to tertiary) and user 1000-1999 moves
/// from secondary to tertiary since v7.
fn table() -> RoutingTable {
    RoutingTable {
        schema_version: crate::routing::SCHEMA_VERSION,
        version: 9,
        policy: "shop/shop".into(),
        instances: BTreeMap::from([
            ("primary".to_owned(), endpoint(7001)),
            ("secondary".to_owned(), endpoint(7002)),
            ("tertiary".to_owned(), endpoint(7003)),
        ]),
        categories: vec![
            category(
                "auth",
                &["auth:", "session:"],
                &[(0, 8191, "primary"), (8192, 16383, "secondary")],
            ),
            category("user", &["user:"], &[(0, 16383, "secondary")]),
            category("default", &[], &[(0, 16383, "tertiary")]),
        ],
        migrating: vec![Migration {
            category: "user".into(),
            start: 1000,
            end: 1999,
            from: "secondary".into(),
            to: "tertiary".into(),
            epoch: 7,
            target_serves: None,
        }],
        failover: vec![Failover {
            category: "auth".into(),
            start: 0,
            end: 8191,
            from: "primary".into(),
            to: "tertiary".into(),
            handover: false,
        }],
        placement_bases: vec![],
        strategy: None,
    }
}

fn resolver() -> Resolver {
    Resolver::new(table()).unwrap()
}

#[test]
fn a_key_on_its_owner() {
    // `foo` is slot 12182 (`CLUSTER KEYSLOT foo`) and matches no prefix.
    let k = locate(&resolver(), "foo");
    assert_eq!(k.category, "default");
    assert_eq!(k.slot, 12182);
    assert_eq!(k.hash_tag, None);
    assert_eq!(k.instance, "tertiary");
    assert_eq!(k.owner, "tertiary");
    assert_eq!(k.address.as_deref(), Some("10.0.0.1:7003"));
    assert_eq!(k.state, KeyState::Owner);
    assert_eq!((k.failover, k.migrating), (None, None));

    // `session:{foo}` is an auth key (by its prefix) in slot 12182 (by its hash tag): secondary's.
    let k = locate(&resolver(), "session:{foo}");
    assert_eq!(k.category, "auth");
    assert_eq!(k.slot, 12182);
    assert_eq!(k.hash_tag.as_deref(), Some("foo"));
    assert_eq!(
        (k.instance.as_str(), k.state),
        ("secondary", KeyState::Owner)
    );
}

#[test]
fn a_key_whose_owner_is_failed_over() {
    // `auth:{bar}` hashes `bar`: slot 5061, primary's, served by tertiary while primary is down.
    let k = locate(&resolver(), "auth:{bar}");
    assert_eq!((k.category.as_str(), k.slot), ("auth", 5061));
    assert_eq!(k.owner, "primary");
    assert_eq!(k.instance, "tertiary");
    assert_eq!(k.address.as_deref(), Some("10.0.0.1:7003"));
    assert_eq!(k.state, KeyState::FailedOver);
    assert_eq!(
        k.failover,
        Some(locate::Hop {
            from: "primary".into(),
            to: "tertiary".into(),
            handover: false,
        })
    );
    assert_eq!(k.migrating, None);
}

#[test]
fn a_key_whose_range_is_handed_over_says_so() {
    let mut t = table();
    t.failover[0].handover = true;
    let k = locate(&Resolver::new(t).unwrap(), "auth:{bar}");
    assert_eq!(k.state, KeyState::FailedOver);
    assert!(k.failover.as_ref().is_some_and(|f| f.handover), "{k:?}");
    let json = serde_json::to_string(&k).unwrap();
    assert!(json.contains("\"handover\":true"), "{json}");
    let text = locate::render(&locate::answer(
        &Resolver::new({
            let mut t = table();
            t.failover[0].handover = true;
            t
        })
        .unwrap(),
        "shop",
        "shop",
        "shop-redis-routing",
        &["auth:{bar}".to_owned()],
    ));
    assert!(text.contains("handing over to primary"), "{text}");
}

#[test]
fn a_key_whose_range_migrates() {
    // `user:1000` is slot 1649 (`CLUSTER KEYSLOT user:1000`), in the range moving to tertiary.
    let k = locate(&resolver(), "user:1000");
    assert_eq!((k.category.as_str(), k.slot), ("user", 1649));
    assert_eq!(k.owner, "secondary");
    assert_eq!(k.instance, "tertiary", "commands go to the target");
    assert_eq!(k.state, KeyState::Migrating);
    assert_eq!(
        k.migrating,
        Some(locate::Move {
            from: "secondary".into(),
            to: "tertiary".into(),
            start: 1000,
            end: 1999,
            epoch: 7
        })
    );
    assert_eq!(k.failover, None);

    // A user key outside the range stays on its owner.
    let key = (0..)
        .map(|n| format!("user:{n}"))
        .find(|k| !(1000..=1999).contains(&key_slot(k.as_bytes())))
        .unwrap();
    let k = locate(&resolver(), &key);
    assert_eq!(
        (k.instance.as_str(), k.state),
        ("secondary", KeyState::Owner)
    );
}

#[test]
fn the_table_is_read_from_its_config_map_in_either_schema() {
    for schema in [1, 2] {
        let (data, binary_data) = contents(&table(), schema);
        let cm = ConfigMap {
            data,
            binary_data,
            ..ConfigMap::default()
        };
        let r = resolver_of("shop", "shop-redis-routing", Some(&cm)).unwrap();
        assert_eq!(r.version(), 9);
        assert_eq!(locate(&r, "user:1000").state, KeyState::Migrating);
    }
    let err = resolver_of("shop", "shop-redis-routing", None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "CachePolicy \"shop\" has no routing table yet: ConfigMap shop-redis-routing not found"
    );
    let err = resolver_of("shop", "shop-redis-routing", Some(&ConfigMap::default())).unwrap_err();
    assert!(err.to_string().ends_with("has no routing.json"), "{err}");
    // A table the sidecar would refuse (slot 16383 of `user` has no owner).
    let mut broken = table();
    broken.categories[1].slots = vec![(0, 16382, "secondary".to_owned()).into()];
    let (data, binary_data) = contents(&broken, 2);
    let cm = ConfigMap {
        data,
        binary_data,
        ..ConfigMap::default()
    };
    let err = resolver_of("shop", "shop-redis-routing", Some(&cm)).unwrap_err();
    assert!(
        matches!(err, Error::Table { .. }) && err.to_string().contains("user"),
        "{err}"
    );
}

#[test]
fn the_answer_as_a_table_and_as_json() {
    let keys = ["foo", "auth:{bar}", "user:1000"].map(str::to_owned);
    let a = answer(&resolver(), "shop", "shop", "shop-redis-routing", &keys);
    let text = render(&a);
    println!("{text}");
    assert_eq!(
        text,
        "policy shop/shop · routing v9 · ConfigMap shop-redis-routing\n\
         KEY         CATEGORY  SLOT        INSTANCE  STATE\n\
         foo         default   12182       tertiary  owner\n\
         auth:{bar}  auth      5061 {bar}  tertiary  failed over: primary unavailable\n\
         user:1000   user      1649        tertiary  migrating secondary → tertiary (slots 1000-1999, since v7)\n"
    );

    let json: serde_json::Value = serde_json::to_value(&a).unwrap();
    assert_eq!(json["schemaVersion"], 1);
    assert_eq!(json["routingVersion"], 9);
    assert_eq!(json["configMap"], "shop-redis-routing");
    let keys = json["keys"].as_array().unwrap();
    assert_eq!(keys[0]["state"], "owner");
    assert!(keys[0].get("failover").is_none() && keys[0].get("hashTag").is_none());
    assert_eq!(keys[1]["state"], "failedOver");
    assert_eq!(keys[1]["hashTag"], "bar");
    assert_eq!(
        keys[1]["failover"],
        serde_json::json!({"from": "primary", "to": "tertiary"})
    );
    assert_eq!(keys[2]["state"], "migrating");
    assert_eq!(
        keys[2]["migrating"],
        serde_json::json!({"from": "secondary", "to": "tertiary", "start": 1000, "end": 1999, "epoch": 7})
    );
    let back: Answer = serde_json::from_value(json).unwrap();
    assert_eq!(back, a);
}

#[test]
fn a_key_with_control_characters_cannot_drive_the_terminal() {
    let keys = ["evil:\x1b[2J".to_owned()];
    let text = render(&answer(&resolver(), "shop", "shop", "cm", &keys));
    assert!(!text.contains('\x1b'), "{text:?}");
}

#[test]
fn without_policy_the_namespace_must_have_exactly_one() {
    assert_eq!(only_policy("shop", vec!["shop".into()]).unwrap(), "shop");
    assert_eq!(
        only_policy("shop", vec![]).unwrap_err().to_string(),
        "there is no CachePolicy in namespace \"shop\""
    );
    assert_eq!(
        only_policy("shop", vec!["b".into(), "a".into()])
            .unwrap_err()
            .to_string(),
        "namespace \"shop\" has several CachePolicies (a, b): pick one with --policy"
    );
}
