//! `cargo run --example local-control-plane -- <state-dir>`: starts the same etcd +
//! kube-apiserver + kube-controller-manager the tests use, writes `<state-dir>/kubeconfig`
//! and `<state-dir>/pid`, and keeps them running until this process is stopped (SIGTERM or
//! Ctrl-C), after which everything it started is killed and its files removed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The parts of the test harness this launcher needs (not all of `tests/support`, which also
// drives the operator binary and only builds inside test targets). `control_plane.rs` reaches
// its sibling as `super::process`, which resolves here at the crate root.
#[allow(dead_code)]
#[path = "../support/control_plane.rs"]
mod control_plane;
#[allow(dead_code)]
#[path = "../support/pki.rs"]
mod pki;
#[allow(dead_code)]
#[path = "../support/process.rs"]
mod process;

use std::path::PathBuf;

fn main() {
    let state_dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: local-control-plane <state-dir>"),
    );
    std::fs::create_dir_all(&state_dir).expect("creating the state dir");
    let cp = control_plane::ControlPlane::shared();
    let kubeconfig = state_dir.join("kubeconfig");
    std::fs::copy(&cp.kubeconfig, &kubeconfig).expect("copying the kubeconfig");
    std::fs::write(state_dir.join("pid"), std::process::id().to_string()).expect("writing pid");
    println!("control plane up at {}", cp.server);
    println!("kubeconfig: {}", kubeconfig.display());
    loop {
        std::thread::park();
    }
}
