//! The sidecar's heartbeat: every second (and whenever a new connection asks), on every
//! instance of its table, the routing table version it uses and how fast that instance
//! answered since the last round — the keys and scripts are in
//! [`crate::redis::protocol::heartbeat`]. Rebalance Jobs wait for it before moving data, and
//! pace their copy by the latencies; the operator counts live sidecars from it. Every answer
//! carries the policy's fences, which the [`FleetView`] keeps; a completed round confirms them
//! for new connections.
//!
//! The heartbeat has connections of its own (named as control connections, never fenced), so
//! it runs while the lanes wait for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::future::join_all;
use tracing::debug;

use crate::redis::protocol::heartbeat::{
    HEARTBEAT_EVERY, Latency, parse_write_reply, write_command,
};
use crate::redis::resp::{Limits, encode_request, parse_frame};

use super::backend::Dedicated;
use super::fleet::{FleetView, Round};
use super::latency_window::Counts;
use super::session::Shared;

/// How long one round waits for an instance's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// The shortest stretch a latency report covers.
const REPORT_AT_LEAST: Duration = Duration::from_millis(900);

/// Writes heartbeats every second, and at once when a round is requested, forever.
pub async fn run(shared: Arc<Shared>) {
    let view: Arc<FleetView> = shared.fleet.clone();
    let mut conns: HashMap<String, Dedicated> = HashMap::new();
    let mut last_report = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            () = view.round_requested() => {}
        }
        let Some(router) = shared.router.load_full() else {
            continue;
        };
        let began = view.clock();
        let id = view.begin_round();
        // Rounds a connection asked for come between the regular ones: they leave the latency
        // reports alone, so that each covers about a second (a few milliseconds say nothing
        // of a 99th percentile).
        let fresh = last_report.elapsed() >= REPORT_AT_LEAST;
        if fresh {
            last_report = Instant::now();
        }
        // Connections of instances that left the table go.
        conns.retain(|name, _| router.resolver.instance_id(name).is_some());
        let mut taken: Vec<(String, Option<Dedicated>)> = router
            .backends
            .iter()
            .map(|b| (b.name().to_owned(), conns.remove(b.name())))
            .collect();
        // Taken only for a round that reports, and put back below if it never arrives.
        let counts: Vec<Option<Counts>> = router
            .backends
            .iter()
            .map(|b| fresh.then(|| b.take_latency()))
            .collect();
        let calls = router
            .backends
            .iter()
            .zip(taken.iter_mut())
            .zip(&counts)
            .map(|((backend, (_, conn)), counts)| {
                let latency = match counts {
                    Some(c) => c.report().map_or(Latency::Nothing, Latency::Report),
                    None => Latency::Keep,
                };
                let command = write_command(router.policy(), &shared.id, router.version(), latency);
                let mut bytes = BytesMut::new();
                encode_request(&command, &mut bytes);
                let conn = conn.take();
                async move {
                    let mut conn = match conn {
                        Some(c) => c,
                        None => match tokio::time::timeout(ANSWER_TIMEOUT, backend.control()).await
                        {
                            Ok(Ok(c)) => c,
                            _ => return (None, None),
                        },
                    };
                    match tokio::time::timeout(ANSWER_TIMEOUT, conn.call(&bytes.freeze(), 1)).await
                    {
                        Ok(Ok(replies)) => {
                            let reply = replies.first();
                            let fences = parse_frame(&reply, &Limits::replies())
                                .ok()
                                .flatten()
                                .and_then(|(frame, _)| parse_write_reply(&frame));
                            (Some(conn), fences)
                        }
                        // A late answer would be read as the next round's: start afresh.
                        _ => (None, None),
                    }
                }
            });
        let results = join_all(calls).await;
        let mut answered = Vec::new();
        for (((name, _), (conn, fences)), (backend, counts)) in taken
            .into_iter()
            .zip(results)
            .zip(router.backends.iter().zip(counts))
        {
            if let Some(fences) = fences {
                view.merge(&fences);
                answered.push(name.clone());
            } else if let Some(counts) = counts {
                // The report did not arrive: the next one covers these replies too (among
                // them the requests that timed out, if the instance stopped answering).
                backend.put_back_latency(&counts);
            }
            if let Some(conn) = conn {
                conns.insert(name, conn);
            }
        }
        debug!(round = id, answered = answered.len(), "heartbeat");
        view.end_round(Round {
            id,
            answered,
            began,
        });
    }
}
