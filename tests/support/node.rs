//! A stand-in for the kubelet, for rebalance Jobs only: there is no node here, so the harness
//! runs the command of each rebalance pod itself (the real `redis-fleet rebalance` binary with
//! the pod's arguments) and reports the outcome through the pod's status, so that the real Job
//! controller and the operator see real completions and failures.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use super::ControlPlane;
use super::process::temp_dir;

/// Runs rebalance pods of one namespace.
#[derive(Debug)]
pub struct Node {
    running: Arc<Mutex<Vec<(String, u32)>>>,
    /// Pods run so far, with their exit codes.
    pub finished: Arc<Mutex<Vec<(String, i32)>>>,
    /// Where the pods' logs go.
    pub logs: std::path::PathBuf,
    _thread: std::thread::JoinHandle<()>,
}

impl Node {
    /// Starts running the rebalance pods of `namespace`.
    pub fn start(cp: &'static ControlPlane, namespace: &str) -> Node {
        let running = Arc::new(Mutex::new(Vec::new()));
        let finished = Arc::new(Mutex::new(Vec::new()));
        let logs = temp_dir("node");
        let (r, f, l, ns) = (
            running.clone(),
            finished.clone(),
            logs.clone(),
            namespace.to_owned(),
        );
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(run(cp, ns, r, f, l));
        });
        Node {
            running,
            finished,
            logs,
            _thread: thread,
        }
    }

    /// Pods running now (name, pid).
    pub fn running(&self) -> Vec<(String, u32)> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Kills (SIGKILL) the running pods, as a node failure would.
    pub fn kill_running(&self) -> usize {
        let pods = self.running();
        for (_, pid) in &pods {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        pods.len()
    }

    /// The log of pod `name` so far.
    pub fn pod_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The logs of every pod run so far.
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        if let Ok(dir) = std::fs::read_dir(&self.logs) {
            for e in dir.flatten() {
                out.push_str(&format!("==> {}\n", e.path().display()));
                out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        out
    }
}

async fn run(
    cp: &'static ControlPlane,
    namespace: String,
    running: Arc<Mutex<Vec<(String, u32)>>>,
    finished: Arc<Mutex<Vec<(String, i32)>>>,
    logs: std::path::PathBuf,
) {
    let client = cp.client().await;
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().labels("app.kubernetes.io/component=rebalance");
    let mut started: BTreeSet<String> = BTreeSet::new();
    let mut stream = watcher(pods.clone(), config)
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = stream.next().await {
        let Ok(pod) = event else { continue };
        let Some(name) = pod.metadata.name.clone() else {
            continue;
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        if started.contains(&name) || matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
            continue;
        }
        started.insert(name.clone());
        let Some(container) = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .cloned()
        else {
            continue;
        };
        let args = container.args.clone().unwrap_or_default();
        // The image's two binaries: the operator's (its Deployment's `command`) and
        // `redis-fleet` (the entrypoint: Jobs and sidecars give only `args`).
        let binary = match container.command.as_deref() {
            Some([command, ..]) if command.ends_with("/redis-fleet-operator") => {
                super::operator_binary()
            }
            _ => super::redis_fleet_binary(),
        };
        let log = logs.join(format!("{name}.log"));
        let (pods, running, finished, kubeconfig) = (
            pods.clone(),
            running.clone(),
            finished.clone(),
            cp.kubeconfig.clone(),
        );
        tokio::spawn(async move {
            let _ = pods
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": {"phase": "Running"}})),
                )
                .await;
            let out = std::fs::File::create(&log).ok();
            let err = out.as_ref().and_then(|f| f.try_clone().ok());
            let mut cmd = tokio::process::Command::new(&binary);
            cmd.args(&args)
                .env("KUBECONFIG", &kubeconfig)
                .env("POD_NAME", &name)
                .env("RUST_LOG", "info,redis_fleet=debug")
                .stdin(Stdio::null())
                .stdout(out.map_or_else(Stdio::null, Stdio::from))
                .stderr(err.map_or_else(Stdio::null, Stdio::from))
                .kill_on_drop(true);
            let code = match cmd.spawn() {
                Ok(mut child) => {
                    if let Some(pid) = child.id() {
                        running
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((name.clone(), pid));
                    }
                    let status = child.wait().await;
                    running
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|(n, _)| *n != name);
                    status.ok().and_then(|s| s.code()).unwrap_or(137)
                }
                Err(_) => 127,
            };
            finished
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((name.clone(), code));
            let phase = if code == 0 { "Succeeded" } else { "Failed" };
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let status = json!({"status": {
                "phase": phase,
                "containerStatuses": [{
                    "name": container.name,
                    "image": container.image.clone().unwrap_or_default(),
                    "imageID": "",
                    "ready": false,
                    "restartCount": 0,
                    "started": false,
                    "state": {"terminated": {
                        "exitCode": code,
                        "reason": if code == 0 { "Completed" } else { "Error" },
                        "startedAt": now,
                        "finishedAt": now,
                    }}
                }]
            }});
            for _ in 0..20 {
                match pods
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                {
                    Ok(_) => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
    }
}
