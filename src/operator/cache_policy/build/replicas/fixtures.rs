//! Fixtures of the replica tests (`replicas`, `handovers`): the shop with `auth` replicated, and
//! what the operator would publish from one table to the next.

use super::*;
use crate::api::redis_instance::InstancePhase;
use crate::operator::cache_policy::build::fixtures::{example_view as view, shop, two};
use crate::operator::cache_policy::build::plan_routing_with;

/// The shop with `auth` replicated.
pub fn replicated(mode: Replication) -> CachePolicySpec {
    let mut spec = shop();
    spec.categories
        .iter_mut()
        .find(|c| c.name == "auth")
        .unwrap()
        .replication = mode;
    spec
}

/// What the operator would publish: the build, then replica placement.
pub fn publish(
    spec: &CachePolicySpec,
    instances: &[InstanceView],
    previous: Option<&RoutingTable>,
    seeded: &[Seeded],
) -> RoutingTable {
    publish_with(spec, instances, previous, seeded, false)
}

/// [`publish`], with swaps of roles held (`redisfleet.io/rebalance: pause|cancel`) when
/// `swaps_held`.
pub fn publish_with(
    spec: &CachePolicySpec,
    instances: &[InstanceView],
    previous: Option<&RoutingTable>,
    seeded: &[Seeded],
    swaps_held: bool,
) -> RoutingTable {
    // As the operator does: the swaps ready in `previous` (their servers fenced), unless held.
    let swaps = previous
        .filter(|_| !swaps_held)
        .map_or_else(Vec::new, |p| ready_swaps(p, spec, instances, &[]));
    let mut t = plan_routing_with(
        "shop/shop",
        spec,
        instances,
        previous,
        spec.balancing.rebalance.enabled,
        &swaps,
    )
    .table
    .unwrap();
    place_replicas(
        &mut t,
        &ReplicaInputs {
            spec,
            instances,
            previous,
            moves: &[],
            seeded,
            swaps_held,
        },
    );
    t.version = previous.map_or(1, |p| p.version + 1);
    t.validate().unwrap();
    t
}

pub fn place(
    t: &mut RoutingTable,
    spec: &CachePolicySpec,
    instances: &[InstanceView],
    previous: Option<&RoutingTable>,
    moves: &[MoveStatus],
    seeded: &[Seeded],
) {
    place_replicas(
        t,
        &ReplicaInputs {
            spec,
            instances,
            previous,
            moves,
            seeded,
            swaps_held: false,
        },
    );
}

pub fn all_seeded(t: &RoutingTable) -> Vec<Seeded> {
    // What the operator records once every seeding pass of `t` finished: one per seeding
    // run and writer.
    let mut out = Vec::new();
    for cat in &t.categories {
        let Some(r) = &cat.replication else { continue };
        let writers = servers(t, &cat.name);
        for run in &r.seeding {
            let span = &writers[usize::from(run.range.start)..=usize::from(run.range.end)];
            for (range, writer) in runs(span) {
                out.push(Seeded {
                    category: cat.name.clone(),
                    instance: run.instance.clone(),
                    writer: (*writer).to_owned(),
                    range: SlotRange::new(
                        range.start + run.range.start,
                        range.end + run.range.start,
                    ),
                    sync: r.mode == ReplicationMode::Sync,
                });
            }
        }
    }
    out
}

/// Makes `instance` the replica of every slot of `auth` in `t`.
pub fn replicate_auth_on(t: &mut RoutingTable, instance: &str) {
    let auth = t.categories.iter_mut().find(|c| c.name == "auth").unwrap();
    auth.replication.as_mut().unwrap().replicas = vec![SlotOwner {
        range: SlotRange::ALL,
        instance: instance.to_owned(),
    }];
}

/// The runs `of` `cat`'s replication in `t` names, as `(start, end, instance)`.
fn runs_named(
    t: &RoutingTable,
    cat: &str,
    of: impl Fn(&crate::routing::table::CategoryReplication) -> &[SlotOwner],
) -> Vec<(u16, u16, String)> {
    t.category(cat)
        .and_then(|c| c.replication.as_ref())
        .map(|r| {
            of(r)
                .iter()
                .map(|o| (o.range.start, o.range.end, o.instance.clone()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn replica_runs(t: &RoutingTable, cat: &str) -> Vec<(u16, u16, String)> {
    runs_named(t, cat, |r| &r.replicas)
}

pub fn seeding_runs(t: &RoutingTable, cat: &str) -> usize {
    t.category(cat)
        .and_then(|c| c.replication.as_ref())
        .map_or(0, |r| r.seeding.len())
}

pub fn outgoing_runs(t: &RoutingTable, cat: &str) -> Vec<(u16, u16, String)> {
    runs_named(t, cat, |r| &r.outgoing)
}

pub fn phase(mut views: Vec<InstanceView>, name: &str, phase: InstancePhase) -> Vec<InstanceView> {
    views.iter_mut().find(|v| v.name == name).unwrap().phase = phase;
    views
}

/// The shop's two instances and a third warm one, with `auth` replicated `Sync` and seeded on
/// `secondary`: the spec, the instances, and the table.
pub fn replicated_on_secondary_of_three() -> (CachePolicySpec, Vec<InstanceView>, RoutingTable) {
    replicated_on_secondary_of_three_as(Replication::Sync)
}

/// [`replicated_on_secondary_of_three`] with `auth` replicated as `mode` says.
pub fn replicated_on_secondary_of_three_as(
    mode: Replication,
) -> (CachePolicySpec, Vec<InstanceView>, RoutingTable) {
    let spec = replicated(mode);
    let mut three = two();
    three.push(view("tertiary", "warm", InstancePhase::Ready, 30));
    let first = publish(&spec, &three, None, &[]);
    let mut seeded = publish(&spec, &three, Some(&first), &all_seeded(&first));
    replicate_auth_on(&mut seeded, "secondary");
    (spec, three, seeded)
}

/// The mode `t` has `auth` written in.
pub fn auth_mode(t: &RoutingTable) -> ReplicationMode {
    t.category("auth")
        .and_then(|c| c.replication.as_ref())
        .map(|r| r.mode)
        .unwrap()
}

/// `views` with `name` changed by `f`.
pub fn with(
    views: &[InstanceView],
    name: &str,
    f: &dyn Fn(InstanceView) -> InstanceView,
) -> Vec<InstanceView> {
    views
        .iter()
        .cloned()
        .map(|v| if v.name == name { f(v) } else { v })
        .collect()
}
