//! The sidecar's heartbeat: every few seconds, on every instance of its table, the routing
//! table version it uses (the keys and scripts are in [`crate::redis::heartbeat`]). Rebalance
//! Jobs wait for it before moving data; the operator counts live sidecars from it.

use std::sync::Arc;
use std::time::Duration;

use crate::redis::heartbeat::write_command;

use super::session::Shared;

/// Writes heartbeats every `every`, forever.
pub async fn run(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Some(router) = shared.router.load_full() else {
            continue;
        };
        let command = write_command(&shared.id, router.version());
        for backend in &router.backends {
            // Fire and forget: a missed heartbeat only delays a migration.
            drop(backend.command(0, &command));
        }
    }
}
