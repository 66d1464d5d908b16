//! Leader election for `redis-fleet operator --leader-election`: one `coordination.k8s.io/v1`
//! Lease, held through [`kube_lease_manager`].
//!
//! - A *standby* runs no controller and writes nothing but the Lease it tries to take. It reads
//!   the Lease every [`Timing::retry`] and, when the Lease is free (released, expired, absent or
//!   already its own), lets `kube-lease-manager` take it: an apply patch that the API server
//!   refuses with a conflict when another replica got there first, so two replicas never both
//!   succeed.
//! - The *leader* renews the Lease every `duration / 3` (the crate's grace period is the rest),
//!   each Lease request bounded by [`Timing::request_timeout`] and never retried by the client,
//!   so a renewal either lands before the Lease expires or fails before it does.
//! - A failed renewal, or the Lease found with another holder, is a lost leadership: the
//!   operator exits at once (non-zero) instead of winding its controllers down, so nothing it
//!   has in flight can write after another replica took over; Kubernetes restarts the container
//!   and it comes back as a standby (or, with the same pod name, as the holder it still is).
//! - On SIGTERM the leader stops its controllers first and then releases the Lease, so the
//!   standby takes over within one [`Timing::retry`] instead of waiting for the Lease to expire.
//!
//! The API calls are `get`, `create` and `patch` on the one Lease: what the chart grants.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::{Client, Config};
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerError, LeaseParams};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::{debug, info, warn};

use super::Error;
use crate::http::Probes;

/// Default name of the Lease.
pub const DEFAULT_LEASE_NAME: &str = "redis-fleet-operator";

/// Where the in-cluster service account's namespace is mounted.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// How leader election is configured (`--leader-election` and the `--lease-*` flags).
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// Name of the Lease.
    pub lease_name: String,
    /// Namespace of the Lease; `None`: the service account's namespace, else `default`.
    pub lease_namespace: Option<String>,
    /// How long a Lease stays valid after its last renewal.
    pub lease_duration: Duration,
}

/// The timings derived from the lease duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// `leaseDurationSeconds`.
    pub duration_secs: u64,
    /// The leader renews when this many seconds of the Lease are left (every `duration / 3`).
    pub grace_secs: u64,
    /// How often a standby reads the Lease (`duration / 6`, at least 500 ms).
    pub retry: Duration,
    /// Timeout of every Lease request: a third of the grace period, at least 1 s, at most half
    /// of it, so a failed renewal is known before the Lease expires.
    pub request_timeout: Duration,
}

impl Timing {
    /// Timings for a lease duration: whole seconds, at least 2 s.
    pub fn new(duration: Duration) -> Result<Self, String> {
        if duration.subsec_nanos() != 0 || duration.as_secs() < 2 {
            return Err(format!(
                "the lease duration must be whole seconds, at least 2s (got {duration:?})"
            ));
        }
        let duration_secs = duration.as_secs();
        let renew_every = (duration_secs / 3).max(1);
        let grace_secs = duration_secs - renew_every;
        let grace = Duration::from_secs(grace_secs);
        Ok(Self {
            duration_secs,
            grace_secs,
            retry: (duration / 6).max(Duration::from_millis(500)),
            request_timeout: (grace / 3).max(Duration::from_secs(1)).min(grace / 2),
        })
    }
}

/// Parses `--lease-duration` (`15s`, `1m`): whole seconds, at least 2 s.
pub fn parse_lease_duration(text: &str) -> Result<Duration, String> {
    let duration = crate::api::duration::parse_duration(text).map_err(|e| e.to_string())?;
    Timing::new(duration)?;
    Ok(duration)
}

/// The namespace of the Lease: the flag (or `POD_NAMESPACE`), else the in-cluster service
/// account's namespace, else `default`.
pub fn lease_namespace(configured: Option<&str>) -> String {
    configured
        .map(str::to_owned)
        .or_else(|| {
            std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
                .ok()
                .map(|ns| ns.trim().to_owned())
        })
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

/// The holder identity: the pod name when known, else the host name with a random suffix.
pub fn identity(instance_name: Option<&str>) -> String {
    if let Some(name) = instance_name.filter(|n| !n.is_empty()) {
        return name.to_owned();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "redis-fleet".to_owned());
    let mut bytes = [0u8; 4];
    // Without an entropy source the process id still tells two processes on a host apart.
    if getrandom::fill(&mut bytes).is_err() {
        bytes = std::process::id().to_be_bytes();
    }
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}-{suffix}")
}

/// Registers `redisfleet_leader` (1 while this replica leads) and returns it.
pub fn register_gauge(registry: &mut Registry) -> Gauge {
    let gauge = Gauge::default();
    registry.sub_registry_with_prefix("redisfleet").register(
        "leader",
        "1 while this replica holds the leader Lease (always 1 without --leader-election)",
        gauge.clone(),
    );
    gauge
}

/// Who holds `lease` validly at `now`, unless that is `identity`; `None` when the Lease may be
/// taken (absent, released, expired, or already ours).
pub fn other_valid_holder(
    lease: Option<&Lease>,
    identity: &str,
    now: SystemTime,
) -> Option<String> {
    let spec = lease?.spec.as_ref()?;
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    if holder == identity {
        return None;
    }
    let renewed: SystemTime = spec.renew_time.as_ref()?.0.into();
    let duration = Duration::from_secs(u64::try_from(spec.lease_duration_seconds?).ok()?);
    (renewed + duration > now).then(|| holder.to_owned())
}

/// One replica's part in the election.
pub struct Election {
    client: Client,
    lease_name: String,
    namespace: String,
    identity: String,
    timing: Timing,
    gauge: Gauge,
    /// Set while this replica leads.
    manager: Option<LeaseManager>,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field(
                "lease",
                &format_args!("{}/{}", self.namespace, self.lease_name),
            )
            .field("identity", &self.identity)
            .field("timing", &self.timing)
            .field("leads", &self.manager.is_some())
            .finish_non_exhaustive()
    }
}

impl Election {
    /// Prepares the election; talks to the API server only from [`Election::acquire`] on.
    pub async fn new(
        config: &ElectionConfig,
        instance_name: Option<&str>,
        gauge: Gauge,
    ) -> Result<Self, Error> {
        let timing = Timing::new(config.lease_duration).map_err(Error::LeaderElection)?;
        // A client of its own: short timeouts and no retries, so that a renewal cannot outlast
        // the Lease it renews.
        let mut kube_config = Config::infer()
            .await
            .map_err(|e| Error::Client(kube::Error::InferConfig(e)))?;
        kube_config.connect_timeout = Some(timing.request_timeout);
        kube_config.read_timeout = Some(timing.request_timeout);
        kube_config.write_timeout = Some(timing.request_timeout);
        kube_config.reset_reader_on_write = true;
        kube_config.default_retry = false;
        let client = Client::try_from(kube_config).map_err(Error::Client)?;
        gauge.set(0);
        Ok(Self {
            client,
            lease_name: config.lease_name.clone(),
            namespace: lease_namespace(config.lease_namespace.as_deref()),
            identity: identity(instance_name),
            timing,
            gauge,
            manager: None,
        })
    }

    /// This replica's holder identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn api(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn params(&self) -> LeaseParams {
        LeaseParams::new(
            self.identity.clone(),
            self.timing.duration_secs,
            self.timing.grace_secs,
        )
    }

    async fn manager(&self) -> Result<LeaseManager, LeaseManagerError> {
        LeaseManager::new(
            self.client.clone(),
            &self.lease_name,
            &self.namespace,
            self.params(),
            LeaseCreateMode::AutoCreate,
        )
        .await
    }

    /// Waits until this replica holds the Lease. Marks `probes` ready once the Lease could be
    /// read: a standby is ready (it must be, or a rolling update would stall).
    pub async fn acquire(&mut self, probes: &Probes) {
        info!(
            lease = %format!("{}/{}", self.namespace, self.lease_name),
            identity = %self.identity,
            duration_secs = self.timing.duration_secs,
            "leader election: waiting for the Lease before starting the controllers"
        );
        let mut last_holder: Option<String> = None;
        loop {
            let holder = match self.api().get_opt(&self.lease_name).await {
                Ok(lease) => {
                    probes.set_ready(true);
                    other_valid_holder(lease.as_ref(), &self.identity, SystemTime::now())
                }
                Err(e) => {
                    warn!(error = %e, "leader election: reading the Lease failed; retrying");
                    tokio::time::sleep(self.timing.retry).await;
                    continue;
                }
            };
            if let Some(holder) = holder {
                if last_holder.as_ref() != Some(&holder) {
                    info!(%holder, "standing by: another replica leads; waiting for the Lease");
                    last_holder = Some(holder);
                }
                tokio::time::sleep(self.timing.retry).await;
                continue;
            }
            match self.try_take().await {
                Ok(Some(manager)) => {
                    self.manager = Some(manager);
                    self.gauge.set(1);
                    info!(identity = %self.identity, "leader election: this replica leads now");
                    return;
                }
                Ok(None) => debug!("leader election: the Lease was taken by another replica"),
                Err(e) => warn!(error = %e, "leader election: taking the Lease failed; retrying"),
            }
            tokio::time::sleep(self.timing.retry).await;
        }
    }

    /// Lets the crate take a Lease that looked free; `None` when another replica was faster
    /// (the crate would then wait for that one's Lease to expire: we read again instead).
    async fn try_take(&self) -> Result<Option<LeaseManager>, LeaseManagerError> {
        let manager = self.manager().await?;
        let patience = Duration::from_secs(self.timing.grace_secs).max(Duration::from_secs(2));
        match tokio::time::timeout(patience, manager.changed()).await {
            Ok(Ok(true)) => Ok(Some(manager)),
            Ok(Ok(false)) | Err(_) => Ok(None),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Keeps renewing the Lease; returns why leadership was lost. Never returns while the
    /// leader keeps its Lease (pending forever when this replica does not lead).
    pub async fn hold(&self) -> String {
        let Some(manager) = &self.manager else {
            return std::future::pending().await;
        };
        loop {
            match manager.changed().await {
                // Still ours (changed() returns on changes only; kept for completeness).
                Ok(true) => {}
                Ok(false) => return "the Lease is held by another replica".to_owned(),
                Err(e) => return format!("renewing the Lease failed: {e}"),
            }
        }
    }

    /// Releases the Lease when this replica holds it (also when it took it while being
    /// stopped), so that a standby takes over at once.
    pub async fn release(&mut self) {
        self.gauge.set(0);
        let manager = match self.manager.take() {
            Some(manager) => manager,
            None => {
                // A standby stopped while taking the Lease may hold it without knowing.
                let lease = self.api().get_opt(&self.lease_name).await.ok().flatten();
                let ours = lease
                    .and_then(|l| l.spec)
                    .and_then(|s| s.holder_identity)
                    .is_some_and(|h| h == self.identity);
                if !ours {
                    return;
                }
                match self.manager().await {
                    Ok(manager) => manager,
                    Err(e) => {
                        warn!(error = %e, "leader election: could not release the Lease");
                        return;
                    }
                }
            }
        };
        match manager.release().await {
            Ok(()) => info!("leader election: released the Lease"),
            Err(e) => {
                warn!(error = %e, "leader election: releasing the Lease failed; it expires by itself")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    #[test]
    fn timings_follow_the_lease_duration() {
        let t = Timing::new(Duration::from_secs(15)).unwrap();
        assert_eq!((t.duration_secs, t.grace_secs), (15, 10));
        assert_eq!(t.retry, Duration::from_millis(2500));
        assert_eq!(t.request_timeout, Duration::from_secs(10) / 3);
        let t = Timing::new(Duration::from_secs(3)).unwrap();
        assert_eq!((t.duration_secs, t.grace_secs), (3, 2));
        assert_eq!(t.retry, Duration::from_millis(500));
        assert_eq!(t.request_timeout, Duration::from_secs(1));
        let t = Timing::new(Duration::from_secs(2)).unwrap();
        assert_eq!(
            (t.grace_secs, t.request_timeout),
            (1, Duration::from_millis(500))
        );
        assert!(Timing::new(Duration::from_secs(1)).is_err());
        assert!(Timing::new(Duration::from_millis(2500)).is_err());
    }

    #[test]
    fn lease_duration_flag() {
        assert_eq!(parse_lease_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_lease_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_lease_duration("1s").is_err());
        assert!(parse_lease_duration("1500ms").is_err());
        assert!(parse_lease_duration("fifteen").is_err());
    }

    #[test]
    fn identity_is_the_pod_name_or_a_unique_host_name() {
        assert_eq!(
            identity(Some("redis-fleet-7d9f-abcde")),
            "redis-fleet-7d9f-abcde"
        );
        let a = identity(None);
        let b = identity(Some(""));
        assert_ne!(a, b, "two processes on one host get two identities");
        assert!(
            a.len() > 9 && a.rsplit_once('-').unwrap().1.len() == 8,
            "{a}"
        );
    }

    #[test]
    fn lease_namespace_prefers_the_flag() {
        assert_eq!(lease_namespace(Some("ops")), "ops");
    }

    fn lease(holder: Option<&str>, renewed_ago: Duration, duration: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: Some(MicroTime(
                    jiff::Timestamp::try_from(SystemTime::now() - renewed_ago).unwrap(),
                )),
                lease_duration_seconds: Some(duration),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn a_lease_is_taken_only_when_free() {
        let now = SystemTime::now();
        let held = lease(Some("b"), Duration::from_secs(1), 15);
        assert_eq!(other_valid_holder(Some(&held), "a", now), Some("b".into()));
        assert_eq!(other_valid_holder(Some(&held), "b", now), None, "ours");
        let expired = lease(Some("b"), Duration::from_secs(20), 15);
        assert_eq!(other_valid_holder(Some(&expired), "a", now), None);
        let released = lease(None, Duration::from_secs(1), 15);
        assert_eq!(other_valid_holder(Some(&released), "a", now), None);
        assert_eq!(other_valid_holder(Some(&Lease::default()), "a", now), None);
        assert_eq!(other_valid_holder(None, "a", now), None);
    }
}
