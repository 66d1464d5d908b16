//! Connections to instances, kept between reconciles: a TLS handshake and AUTH per probe would
//! cost more than the work. One connection per instance serves its probes, sampling and
//! purging, one request at a time ([`SerialConnection`]: between requests it holds its socket
//! and no buffers, which at 1 000 instances matters); it is valid for the target it was
//! opened to; a caller whose command fails drops it, so the next call connects afresh.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;

use crate::api::RedisInstance;
use crate::redis::connect::{Target, redact};
use crate::redis::serial::SerialConnection;

/// Kept connections, by instance.
#[derive(Default)]
pub struct Connections {
    kept: Mutex<HashMap<ObjectRef<RedisInstance>, (Target, SerialConnection)>>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections").finish_non_exhaustive()
    }
}

impl Connections {
    /// A connection to `instance` at `target`: the one kept from an earlier call while the
    /// target is the same, else a new one. Errors are redacted. A caller whose command fails
    /// calls [`Connections::drop_connection`], so the next call connects afresh.
    pub async fn connection(
        &self,
        instance: &ObjectRef<RedisInstance>,
        target: &Target,
        timeout: Duration,
    ) -> Result<SerialConnection, String> {
        self.connect(instance, target, timeout)
            .await
            .map_err(|e| redact(&e.to_string(), &target.credentials))
    }

    /// Like [`Connections::connection`], with the `redis` error as it is (for probes, which
    /// classify it); its text may hold credentials.
    pub async fn connect(
        &self,
        instance: &ObjectRef<RedisInstance>,
        target: &Target,
        timeout: Duration,
    ) -> redis::RedisResult<SerialConnection> {
        {
            let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((t, conn)) = kept.get(instance)
                && t == target
            {
                return Ok(conn.clone());
            }
        }
        let conn = SerialConnection::open(target, timeout).await?;
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.insert(instance.clone(), (target.clone(), conn.clone()));
        Ok(conn)
    }

    /// Forgets the kept connection to `instance` (after an error on it, or once it is gone).
    pub fn drop_connection(&self, instance: &ObjectRef<RedisInstance>) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.remove(instance);
    }
}
