//! Test fixtures for the policy's pure steps: instances as they see them ([`InstanceView`]),
//! built from one default and a few adjustments, and the shop example.

use crate::api::cache_policy::CachePolicySpec;
use crate::api::redis_instance::InstancePhase;
use crate::routing::table::{InstanceEndpoint, RoutingTable, SecretKeyName};

use super::InstanceView;

/// The spec of the shop example (`examples/cache-policy.yaml`).
pub fn shop() -> CachePolicySpec {
    serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/cache-policy.yaml"
        ))
        .map(|y| {
            let v: serde_json::Value = serde_saphyr::from_str(&y).unwrap();
            v["spec"].to_string()
        })
        .unwrap(),
    )
    .unwrap()
}

/// The shop's two 30 MiB instances: `primary` (hot) and `secondary` (warm), both Ready.
pub fn two() -> Vec<InstanceView> {
    vec![
        example_view("primary", "hot", InstancePhase::Ready, 30),
        example_view("secondary", "warm", InstancePhase::Ready, 30),
    ]
}

/// An instance of `mib` MiB in `tier` as the examples describe one: at `<name>.example:6379`,
/// its password in the Secret `<name>-redis`.
pub fn example_view(name: &str, tier: &str, phase: InstancePhase, mib: u64) -> InstanceView {
    view(name)
        .in_tier(tier)
        .in_phase(phase)
        .with_capacity_mib(mib)
        .reached_at(InstanceEndpoint {
            host: format!("{name}.example"),
            port: 6379,
            tls: None,
            username_secret: None,
            password_secret: Some(SecretKeyName {
                name: format!("{name}-redis"),
                key: "password".into(),
            }),
        })
}

/// A Ready, empty instance of 30 MiB in no tier, weight 100, reached at `h:1` without
/// credentials.
pub fn view(name: &str) -> InstanceView {
    InstanceView {
        name: name.into(),
        tier: None,
        phase: InstancePhase::Ready,
        capacity_bytes: Some(30 << 20),
        used_bytes: 0,
        weight: 100,
        drain: false,
        copies_to_free: false,
        lost_data: false,
        evicting_policy: None,
        endpoint: InstanceEndpoint {
            host: "h".into(),
            port: 1,
            tls: None,
            username_secret: None,
            password_secret: None,
        },
    }
}

impl InstanceView {
    /// In tier `tier`.
    pub fn in_tier(self, tier: &str) -> Self {
        Self {
            tier: Some(tier.into()),
            ..self
        }
    }

    /// In phase `phase`.
    pub fn in_phase(self, phase: InstancePhase) -> Self {
        Self { phase, ..self }
    }

    /// With a capacity of `mib` MiB.
    pub fn with_capacity_mib(self, mib: u64) -> Self {
        Self {
            capacity_bytes: Some(mib << 20),
            ..self
        }
    }

    /// Using `mib` MiB.
    pub fn with_used_mib(self, mib: u64) -> Self {
        Self {
            used_bytes: mib << 20,
            ..self
        }
    }

    /// Draining or not.
    pub fn draining(self, drain: bool) -> Self {
        Self { drain, ..self }
    }

    /// Whose `maxmemory-policy` is `policy`, one that may evict keys without a TTL.
    pub fn evicting(self, policy: &str) -> Self {
        Self {
            evicting_policy: Some(policy.into()),
            ..self
        }
    }

    /// Reached at `endpoint`.
    pub fn reached_at(self, endpoint: InstanceEndpoint) -> Self {
        Self { endpoint, ..self }
    }
}

/// Every slot of every failover entry of `during` is routed by `next` where `during` routed
/// it: to the fallback, which holds the writes of the outage.
pub fn assert_failed_over_slots_stay_with_their_fallback(
    during: &RoutingTable,
    next: &RoutingTable,
) {
    let was = crate::routing::Resolver::new(during.clone()).unwrap();
    let now = crate::routing::Resolver::new(next.clone()).unwrap();
    for f in &during.failover {
        let category = during
            .categories
            .iter()
            .position(|c| c.name == f.category)
            .and_then(|c| u16::try_from(c).ok())
            .unwrap();
        for slot in f.start..=f.end {
            assert_eq!(
                now.instance_name(now.route(category, slot).target),
                was.instance_name(was.route(category, slot).target),
                "{} slot {slot}: the writes of the outage are on {}",
                f.category,
                f.to
            );
        }
    }
}
