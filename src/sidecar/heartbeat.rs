//! Heartbeats: every few seconds the sidecar writes `redisfleet:sidecar:<id>` = the routing
//! table version it uses, with a short TTL, on every instance of the table. A rebalance Job
//! waits until every live heartbeat shows the version that started a migration, so no sidecar
//! still writes by an older table while data moves.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::session::Shared;

/// Prefix of heartbeat keys.
pub const HEARTBEAT_PREFIX: &str = "redisfleet:sidecar:";

/// How long a heartbeat outlives its sidecar.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(15);

/// The heartbeat key of sidecar `id`.
pub fn heartbeat_key(id: &str) -> String {
    format!("{HEARTBEAT_PREFIX}{id}")
}

/// Writes heartbeats every `every`, forever.
pub async fn run(shared: Arc<Shared>, every: Duration) {
    let key = Bytes::from(heartbeat_key(&shared.id));
    let ttl = Bytes::from(HEARTBEAT_TTL.as_millis().to_string());
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Some(router) = shared.router.load_full() else {
            continue;
        };
        let version = Bytes::from(router.version().to_string());
        for backend in &router.backends {
            // Fire and forget: a missed heartbeat only delays a migration.
            drop(backend.command(
                0,
                &[
                    Bytes::from_static(b"SET"),
                    key.clone(),
                    version.clone(),
                    Bytes::from_static(b"PX"),
                    ttl.clone(),
                ],
            ));
        }
    }
}
