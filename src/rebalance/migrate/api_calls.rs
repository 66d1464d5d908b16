//! The Job's calls of the API server. None may hold the Job for long: while the Job waits on
//! one it moves none of the keys sidecars ask for (their clients wait on them). So every call
//! is bounded ([`client`]), and those the copy makes as it goes (reading the `pause`
//! annotation, reporting progress) run on tasks of their own ([`Beside`]): an API server that
//! stops answering delays the status, not the copy.

use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api::CachePolicy;

use super::{Error, FIELD_MANAGER};

/// How long one call may take, the client's own retries included (kube retries a 429, 503 or
/// 504 up to 15 times, backing off towards 1 000 s): past it the call fails, and with it the
/// attempt, which the next attempt resumes.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a request waits for its connection, or for the next bytes of its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The Job's API client (configured the usual way: in the pod, else `KUBECONFIG`), every call
/// bounded by [`CALL_TIMEOUT`] and each request by [`REQUEST_TIMEOUT`]. kube's default
/// client sets no read timeout: a request the API server accepted and never answered held
/// the Job for good.
pub(super) async fn client() -> Result<Client, Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(|e| Error::Setup(format!("no Kubernetes client configuration: {e}")))?;
    config.connect_timeout = Some(REQUEST_TIMEOUT);
    config.read_timeout = Some(REQUEST_TIMEOUT);
    config.write_timeout = Some(REQUEST_TIMEOUT);
    // Without it the time a pooled connection sat idle counts against the next answer's read
    // timeout (an idle HTTP/1 connection keeps a read pending): a call after a quiet spell
    // could fail at once.
    config.reset_reader_on_write = true;
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&tower::timeout::TimeoutLayer::new(CALL_TIMEOUT))
        .build())
}

/// A call of the copy's on a task of its own: the copy starts it, goes on, and takes its
/// result once it has finished. One at a time: a call is started only once the last one's
/// result was taken (or forgotten), so that two reports never race.
pub(super) struct Beside<T>(Option<JoinHandle<Result<T, Error>>>);

impl<T> Default for Beside<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T: Send + 'static> Beside<T> {
    /// Whether no call is under way, nor a result waiting to be taken.
    pub(super) fn idle(&self) -> bool {
        self.0.is_none()
    }

    /// Starts `call`. Only when [`Beside::idle`].
    pub(super) fn start(&mut self, call: impl Future<Output = Result<T, Error>> + Send + 'static) {
        debug_assert!(self.idle(), "a call is under way");
        self.0 = Some(tokio::spawn(call));
    }

    /// What the call returned, once it has finished (then it is gone).
    pub(super) fn finished(&mut self) -> Option<Result<T, Error>> {
        let handle = self.0.as_mut()?;
        if !handle.is_finished() {
            return None;
        }
        // Polled in place: a finished task's handle may still answer `Pending` once (the
        // runtime's cooperative budget), and the result must not go with it.
        let done = handle.now_or_never()?;
        self.0 = None;
        Some(joined(done))
    }

    /// Waits for the call under way, if any, and returns what it returned.
    pub(super) async fn wait(&mut self) -> Option<Result<T, Error>> {
        let done = self.0.as_mut()?.await;
        self.0 = None;
        Some(joined(done))
    }

    /// Forgets the call under way: it finishes on its own, its result unread.
    pub(super) fn forget(&mut self) {
        self.0 = None;
    }
}

/// What a call beside the copy that finished means for the Job: a newer plan or attempt in
/// charge stops it; any other failure is logged and the call is made again later (the status
/// and the pause lag, the copy goes on). `Ok(None)`: it failed.
pub(super) fn outcome<T>(what: &str, done: Result<T, Error>) -> Result<Option<T>, Error> {
    match done {
        Ok(v) => Ok(Some(v)),
        Err(Error::Superseded) => Err(Error::Superseded),
        Err(e) => {
            warn!(error = %e, "{what} failed; tried again later");
            Ok(None)
        }
    }
}

fn joined<T>(r: Result<Result<T, Error>, tokio::task::JoinError>) -> Result<T, Error> {
    r.unwrap_or_else(|e| {
        Err(Error::Internal(format!(
            "a call of the API server failed: {e}"
        )))
    })
}

/// Reads the policy (its annotations, its status).
pub(super) async fn read_policy(
    policies: Api<CachePolicy>,
    name: String,
) -> Result<CachePolicy, Error> {
    Ok(policies.get(&name).await?)
}

/// One progress report: the Job-owned fields of `status.rebalance` for the plan and attempt
/// this Job runs.
pub(super) struct Progress {
    pub(super) policy: String,
    pub(super) plan_id: i64,
    pub(super) attempt: i32,
    pub(super) step: &'static str,
    /// The fields ([`super::progress`]).
    pub(super) fields: serde_json::Value,
    /// For the log: keys moved, keys in all.
    pub(super) moved: u64,
    pub(super) total: u64,
}

/// Writes the Job-owned fields of `status.rebalance`, on the condition that the plan and
/// attempt in status are still this Job's: a Job of an older plan or attempt never reports
/// into a newer one. One JSON patch whose `test`s make that condition ([`checked_patch`]);
/// one the API server refuses is told apart by a read ([`write_progress_read_first`]).
/// `Ok(false)`: the status kept changing under it, nothing was written this time.
///
/// One call, not a read and a write: the Job reports every 1–5 s while it copies
/// ([`super::control::count_every`]), and on a small node each call of the API server is CPU
/// the foreground's requests wait for.
pub(super) async fn write_progress(
    policies: Api<CachePolicy>,
    progress: Progress,
) -> Result<bool, Error> {
    let (step, moved, total) = (progress.step, progress.moved, progress.total);
    let patch = checked_patch(progress.plan_id, progress.attempt, &progress.fields)?;
    let written = match policies
        .patch_status(&progress.policy, &PatchParams::apply(FIELD_MANAGER), &patch)
        .await
    {
        Ok(_) => true,
        // A `test` failed (a newer plan or attempt, or a status with no plan), or the patch
        // was refused otherwise: the read tells which.
        Err(kube::Error::Api(e)) if e.code == 422 => {
            info!(refusal = %e.message, "the progress report was refused; reading the status");
            write_progress_read_first(policies, progress).await?
        }
        Err(e) => return Err(e.into()),
    };
    if written {
        info!(step, moved, total, "progress");
    }
    Ok(written)
}

/// The JSON patch that sets `fields` in `status.rebalance` if its plan is `plan_id` at
/// `attempt` (a `null` field is stored as one: the schema makes every Job-owned field
/// nullable, and reads it as absent).
fn checked_patch(
    plan_id: i64,
    attempt: i32,
    fields: &serde_json::Value,
) -> Result<Patch<()>, Error> {
    let mut ops = vec![
        json!({"op": "test", "path": "/status/rebalance/planId", "value": plan_id}),
        json!({"op": "test", "path": "/status/rebalance/attempts", "value": attempt}),
    ];
    for (field, value) in fields.as_object().into_iter().flatten() {
        ops.push(
            json!({"op": "add", "path": format!("/status/rebalance/{field}"), "value": value}),
        );
    }
    serde_json::from_value(serde_json::Value::Array(ops))
        .map(Patch::Json)
        .map_err(|e| Error::Internal(format!("a progress report's patch: {e}")))
}

/// [`write_progress`] as a read and a merge patch on the condition of the resourceVersion it
/// read: tells a newer plan or attempt ([`Error::Superseded`]) from a patch refused for
/// another reason, which it writes the old way.
async fn write_progress_read_first(
    policies: Api<CachePolicy>,
    progress: Progress,
) -> Result<bool, Error> {
    let Progress {
        policy: name,
        plan_id,
        attempt,
        step,
        fields,
        ..
    } = progress;
    for _ in 0..10 {
        let policy = policies.get_status(&name).await?;
        let mine = policy
            .status
            .as_ref()
            .and_then(|s| s.rebalance.as_ref())
            .is_some_and(|r| r.plan_id == plan_id && r.attempts == attempt);
        if !mine {
            return Err(Error::Superseded);
        }
        let patch = json!({
            "metadata": {"resourceVersion": policy.resource_version()},
            "status": {"rebalance": &fields},
        });
        match policies
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => return Ok(true),
            // Someone wrote the status meanwhile: read it again.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    warn!(
        step,
        "the status kept changing; progress not reported this time"
    );
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_tests_its_plan_and_attempt_before_it_sets_its_fields() {
        let fields = super::super::progress("Copying", Some((5, 9, 2)), &[], None);
        let Patch::Json(patch) = checked_patch(7, 2, &fields).unwrap() else {
            panic!("not a JSON patch");
        };
        let ops = serde_json::to_value(&patch).unwrap();
        let ops = ops.as_array().unwrap();
        assert_eq!(
            ops[..2],
            [
                json!({"op": "test", "path": "/status/rebalance/planId", "value": 7}),
                json!({"op": "test", "path": "/status/rebalance/attempts", "value": 2}),
            ]
        );
        let set: Vec<(&str, &serde_json::Value)> = ops[2..]
            .iter()
            .map(|op| {
                assert_eq!(op["op"], "add");
                (op["path"].as_str().unwrap(), &op["value"])
            })
            .collect();
        // Every field goes, a cleared one as null (the pacing note here).
        assert!(set.contains(&("/status/rebalance/step", &json!("Copying"))));
        assert!(set.contains(&("/status/rebalance/keysMoved", &json!(5))));
        assert!(set.contains(&("/status/rebalance/pacing", &serde_json::Value::Null)));
        assert_eq!(set.len(), fields.as_object().unwrap().len());
    }
}
