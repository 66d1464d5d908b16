//! A real Kubernetes control plane for tests: etcd + kube-apiserver + kube-controller-manager
//! on free loopback ports, envtest-style.
//!
//! The binaries come from `tests/control-plane/build.sh` (built once from the Go module proxy
//! and cached); etcd comes from the `etcd-bin-vendored-linux-amd64` crate. One control plane is
//! shared by all tests of a test binary; each test works in its own namespace.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::process::{ChildGuard, free_port, temp_dir, wait_until};

/// The project's checkout (where `Cargo.toml` is).
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Kubernetes version the wrapper module builds, e.g. `v1.37.2`.
pub fn kubernetes_version() -> String {
    let go_mod = std::fs::read_to_string(project_root().join("tests/control-plane/go.mod"))
        .expect("reading tests/control-plane/go.mod");
    go_mod
        .lines()
        .find_map(|l| l.strip_prefix("require k8s.io/kubernetes "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("tests/control-plane/go.mod requires k8s.io/kubernetes")
        .to_owned()
}

/// Directory holding `kube-apiserver` and `kube-controller-manager`: `$REDIS_FLEET_K8S_BIN`,
/// else whatever `tests/control-plane/build.sh` prints (it builds on a cold cache).
fn kubernetes_binaries() -> PathBuf {
    if let Ok(dir) = std::env::var("REDIS_FLEET_K8S_BIN") {
        return PathBuf::from(dir);
    }
    let out = Command::new(project_root().join("tests/control-plane/build.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("running tests/control-plane/build.sh");
    assert!(
        out.status.success(),
        "tests/control-plane/build.sh failed; see its output above"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A running control plane. Processes and files go away when the test binary exits.
#[derive(Debug)]
pub struct ControlPlane {
    /// The kubeconfig of a cluster admin (`system:masters`).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// Working directory (certificates, etcd data, logs).
    pub dir: PathBuf,
    _etcd: ChildGuard,
    _apiserver: ChildGuard,
    _controller_manager: ChildGuard,
}

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// The bearer token of the cluster admin in the kubeconfig (`system:masters`).
pub const ADMIN_TOKEN: &str = "redis-fleet-test-admin-token";

impl ControlPlane {
    /// The control plane of this test binary, started on first use. If it cannot start, every
    /// test that asks for it fails with the same message (without retrying the slow start).
    pub fn shared() -> &'static ControlPlane {
        let started = SHARED.get_or_init(|| {
            // The ports are picked free and bound later by etcd and the apiserver, so another
            // process can take one meanwhile: a failed start is tried again on new ports.
            let mut failures = Vec::new();
            for _ in 0..3 {
                match std::panic::catch_unwind(ControlPlane::start) {
                    Ok(cp) => return Ok(cp),
                    Err(panic) => failures.push(
                        panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_else(|| "the control plane failed to start".to_owned()),
                    ),
                }
            }
            Err(failures.join("\n--- next attempt ---\n"))
        });
        match started {
            Ok(cp) => cp,
            Err(message) => panic!("control plane unavailable: {message}"),
        }
    }

    fn start() -> ControlPlane {
        let bin = kubernetes_binaries();
        let dir = temp_dir("k8s");
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki).expect("creating the pki dir");
        make_certificates(&pki);
        let token = ADMIN_TOKEN;
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{token},admin,admin-uid,system:masters\n"),
        )
        .expect("writing the token file");

        // etcd
        let etcd_client = free_port();
        let etcd_peer = free_port();
        let etcd_bin = etcd_bin_vendored_linux_amd64::etcd_bin_path()
            .expect("etcd binary from the etcd-bin-vendored-linux-amd64 crate");
        let mut cmd = Command::new(etcd_bin);
        cmd.arg("--data-dir")
            .arg(dir.join("etcd"))
            .arg(format!(
                "--listen-client-urls=http://127.0.0.1:{etcd_client}"
            ))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{etcd_client}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"
            ))
            .arg(format!(
                "--initial-cluster=default=http://127.0.0.1:{etcd_peer}"
            ))
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn")
            .arg("--quota-backend-bytes=4294967296");
        let etcd = ChildGuard::spawn("etcd", cmd, &dir.join("etcd.log"));

        // kube-apiserver
        let port = free_port();
        let server = format!("https://127.0.0.1:{port}");
        let mut cmd = Command::new(bin.join("kube-apiserver"));
        cmd.arg(format!("--etcd-servers=http://127.0.0.1:{etcd_client}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            // A loopback advertise address is refused by the endpoint reconciler; there are
            // no nodes to reach the apiserver through the kubernetes Service anyway.
            .arg("--endpoint-reconciler-type=none")
            .arg(format!("--secure-port={port}"))
            .arg(format!("--cert-dir={}", pki.display()))
            .arg(format!(
                "--tls-cert-file={}",
                pki.join("server.crt").display()
            ))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.join("server.key").display()
            ))
            .arg(format!("--client-ca-file={}", pki.join("ca.crt").display()))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!(
                "--service-account-key-file={}",
                pki.join("sa.key").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.join("sa.key").display()
            ))
            .arg(format!(
                "--token-auth-file={}",
                dir.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--allow-privileged=true")
            .arg("--enable-priority-and-fairness=false")
            .arg("--profiling=false")
            .arg("--v=1");
        let apiserver = ChildGuard::spawn("kube-apiserver", cmd, &dir.join("kube-apiserver.log"));

        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            kubeconfig_yaml(&server, &pki.join("ca.crt"), token),
        )
        .expect("writing the kubeconfig");

        let mut cp_etcd = etcd;
        let mut cp_apiserver = apiserver;
        let ready = wait_until(Duration::from_secs(120), || {
            if !cp_apiserver.is_running() || !cp_etcd.is_running() {
                return true; // stop waiting: the assertion below reports the exit
            }
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["get", "--raw", "/readyz"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(
            ready && cp_apiserver.is_running() && cp_etcd.is_running(),
            "kube-apiserver did not become ready\n{}\n{}",
            cp_apiserver.log_tail(40),
            cp_etcd.log_tail(20)
        );

        // kube-controller-manager: the real garbage collector and Job controller.
        let mut cmd = Command::new(bin.join("kube-controller-manager"));
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--authentication-kubeconfig={}", kubeconfig.display()))
            .arg(format!("--authorization-kubeconfig={}", kubeconfig.display()))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()))
            .arg(format!("--cert-dir={}", pki.display()))
            .arg("--leader-elect=false")
            .arg("--use-service-account-credentials=false")
            .arg(
                "--controllers=garbage-collector-controller,job-controller,namespace-controller,ttl-after-finished-controller",
            )
            .arg(format!("--root-ca-file={}", pki.join("ca.crt").display()))
            .arg("--concurrent-gc-syncs=5")
            .arg("--v=1");
        let controller_manager = ChildGuard::spawn(
            "kube-controller-manager",
            cmd,
            &dir.join("kube-controller-manager.log"),
        );

        ControlPlane {
            kubeconfig,
            server,
            dir,
            _etcd: cp_etcd,
            _apiserver: cp_apiserver,
            _controller_manager: controller_manager,
        }
    }

    /// A new client for the calling test's runtime. (Clients hold connections spawned on the
    /// runtime that made them, so tests must not share one across `#[tokio::test]`s.)
    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("reading the test kubeconfig");
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("loading the test kubeconfig");
        Client::try_from(config).expect("building a client")
    }

    /// The kube-apiserver's process id.
    pub fn apiserver_pid(&self) -> Option<u32> {
        self._apiserver.pid()
    }

    /// The CA that signed the API server's serving certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("pki/ca.crt")
    }

    /// `kubectl` pointed at this control plane.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// A kubeconfig authenticating with `token` (e.g. a ServiceAccount's, from
    /// `kubectl create token`), written next to the admin's as `<file name>`.
    pub fn kubeconfig_with_token(&self, file_name: &str, token: &str) -> PathBuf {
        let path = self.dir.join(file_name);
        std::fs::write(
            &path,
            kubeconfig_yaml(&self.server, &self.dir.join("pki/ca.crt"), token),
        )
        .expect("writing a kubeconfig");
        path
    }

    /// Creates a namespace named `<prefix>-<random>` and returns its name.
    pub async fn namespace(&self, client: &Client, prefix: &str) -> String {
        let name = format!("{prefix}-{:08x}", rand_u32());
        let api: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        api.create(&PostParams::default(), &ns)
            .await
            .expect("creating a test namespace");
        name
    }

    /// Installs (server-side applies) the project's CRDs and waits until they are established.
    pub async fn install_crds(&self, client: &Client) {
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in redis_fleet::api::crds() {
            let name = crd.metadata.name.clone().expect("CRD name");
            api.patch(
                &name,
                &PatchParams::apply("redis-fleet-tests").force(),
                &Patch::Apply(&crd),
            )
            .await
            .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
            wait_for_established(&api, &name).await;
        }
    }
}

/// Waits until the CRD `name` has condition Established=True.
pub async fn wait_for_established(api: &Api<CustomResourceDefinition>, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let crd = api.get(name).await.expect("reading a CRD");
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "CRD {name} not established"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish() as u32
}

fn kubeconfig_yaml(server: &str, ca: &Path, token: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: test
  context:
    cluster: test
    user: admin
    namespace: default
current-context: test
"#,
        ca = ca.display()
    )
}

/// A CA, a serving certificate for 127.0.0.1/localhost and the service-account signing key.
fn make_certificates(pki: &Path) {
    super::pki::ca_and_server_certificate(pki, "kube-apiserver");
    super::pki::openssl(pki, &["genrsa", "-out", "sa.key", "2048"]);
}
