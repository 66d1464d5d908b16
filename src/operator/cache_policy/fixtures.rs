//! Test fixtures: instances as the policy's pure steps see them ([`InstanceView`]), built from
//! one default and a few adjustments.

use crate::api::redis_instance::InstancePhase;
use crate::routing::table::InstanceEndpoint;

use super::build::InstanceView;

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

    /// Reached at `endpoint`.
    pub fn reached_at(self, endpoint: InstanceEndpoint) -> Self {
        Self { endpoint, ..self }
    }
}
