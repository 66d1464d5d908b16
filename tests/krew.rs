//! The krew manifest of `kubectl fleet`: the template in `plugins/krew/` is a krew `Plugin`
//! whose binary is `kubectl-fleet`, with placeholders for what only a release knows; and
//! `hack/krew.sh` fills them in from the archive it packs — a sha256 that matches, a URL that
//! names the archive — and the archive holds a `kubectl-fleet` that is the plugin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::control_plane::project_root;
use support::process::temp_dir;

fn manifest(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What any manifest of the plugin must say, filled or not.
fn check_plugin(m: &Value) {
    assert_eq!(
        m["apiVersion"],
        "krew.googlecontainertools.github.com/v1alpha2"
    );
    assert_eq!(m["kind"], "Plugin");
    assert_eq!(
        m["metadata"]["name"], "fleet",
        "installed as `kubectl fleet`"
    );
    let spec = &m["spec"];
    for field in ["version", "homepage", "shortDescription", "description"] {
        assert!(
            spec[field].as_str().is_some_and(|s| !s.is_empty()),
            "{field}"
        );
    }
    let platforms = spec["platforms"].as_array().unwrap();
    assert!(!platforms.is_empty());
    for p in platforms {
        let labels = &p["selector"]["matchLabels"];
        assert!(
            labels["os"].is_string() && labels["arch"].is_string(),
            "{p}"
        );
        assert_eq!(p["bin"], "kubectl-fleet", "{p}");
        assert!(
            p["files"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["from"] == "kubectl-fleet" && f["to"] == "."),
            "{p}"
        );
        assert!(p["uri"].is_string() && p["sha256"].is_string(), "{p}");
    }
}

#[test]
fn the_template_is_a_krew_plugin_named_fleet_with_release_placeholders() {
    let m = manifest(&project_root().join("plugins/krew/fleet.yaml"));
    check_plugin(&m);
    assert_eq!(m["spec"]["version"], "v{{VERSION}}");
    let linux = &m["spec"]["platforms"][0];
    assert_eq!(linux["selector"]["matchLabels"]["os"], "linux");
    assert_eq!(linux["selector"]["matchLabels"]["arch"], "amd64");
    assert_eq!(
        linux["uri"],
        "{{DOWNLOAD_BASE}}/kubectl-fleet_v{{VERSION}}_linux_amd64.tar.gz"
    );
    assert_eq!(linux["sha256"], "{{SHA256_LINUX_AMD64}}");
}

#[test]
fn the_release_script_packs_the_plugin_and_fills_the_manifest_in() {
    let out = temp_dir("krew");
    let version = env!("CARGO_PKG_VERSION");
    let run = Command::new(project_root().join("hack/krew.sh"))
        .args([
            version,
            "https://downloads.example.invalid/v1/",
            out.to_str().unwrap(),
        ])
        .env("REDIS_FLEET_BINARY", env!("CARGO_BIN_EXE_redis-fleet"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let archive_name = format!("kubectl-fleet_v{version}_linux_amd64.tar.gz");
    let archive = out.join(&archive_name);

    let filled = std::fs::read_to_string(out.join("fleet.yaml")).unwrap();
    assert!(!filled.contains("{{"), "{filled}");
    let m = manifest(&out.join("fleet.yaml"));
    check_plugin(&m);
    assert_eq!(m["spec"]["version"], format!("v{version}").as_str());
    let linux = &m["spec"]["platforms"][0];
    assert_eq!(
        linux["uri"],
        format!("https://downloads.example.invalid/v1/{archive_name}").as_str()
    );
    let sha = Command::new("sha256sum").arg(&archive).output().unwrap();
    let sha = String::from_utf8(sha.stdout).unwrap();
    assert_eq!(linux["sha256"], sha.split_whitespace().next().unwrap());

    // The archive holds the plugin's binary, under the name that makes it the plugin.
    let listing = Command::new("tar")
        .arg("tzf")
        .arg(&archive)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&listing.stdout), "kubectl-fleet\n");
    let unpacked = out.join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    let untar = Command::new("tar")
        .arg("xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(untar.success());
    let help = Command::new(unpacked.join("kubectl-fleet"))
        .args(["where", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("Usage: kubectl fleet where"),
        "{}",
        String::from_utf8_lossy(&help.stdout)
    );

    // A version the binary is not is refused (the manifest would lie).
    let wrong = Command::new(project_root().join("hack/krew.sh"))
        .args([
            "9.9.9",
            "https://downloads.example.invalid",
            out.to_str().unwrap(),
        ])
        .env("REDIS_FLEET_BINARY", env!("CARGO_BIN_EXE_redis-fleet"))
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("not redis-fleet 9.9.9"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
}
