//! The kubectl plugin's command line: which name makes the binary the plugin, and how
//! `kubectl fleet status|where …` parse, kubectl's flags included.

use std::path::PathBuf;

use clap::Parser;

use super::*;
use crate::cli::cluster::ClusterArgs;

fn parse(args: &[&str]) -> Result<View, clap::Error> {
    Plugin::try_parse_from(std::iter::once("kubectl-fleet").chain(args.iter().copied()))
        .map(|p| p.view)
}

#[test]
fn the_binary_is_the_plugin_under_the_plugins_name_only() {
    for argv0 in [
        "kubectl-fleet",
        "/home/me/.krew/bin/kubectl-fleet",
        "./kubectl-fleet",
        r"kubectl-fleet.exe",
        "bin/kubectl-fleet.EXE",
    ] {
        assert!(invoked_as_plugin(OsStr::new(argv0)), "{argv0}");
    }
    for argv0 in [
        "redis-fleet",
        "/usr/local/bin/redis-fleet",
        "kubectl-fleet-where",
        "kubectl-fleets",
        "kubectl",
        "/opt/kubectl-fleet/redis-fleet",
        "",
    ] {
        assert!(!invoked_as_plugin(OsStr::new(argv0)), "{argv0}");
    }
}

#[test]
fn where_takes_keys_namespace_policy_output_and_kubectls_cluster_flags() {
    let view = parse(&[
        "where",
        "user:42",
        "-n",
        "shop",
        "--kubeconfig",
        "/tmp/kc",
        "--context",
        "staging",
        "-o",
        "json",
    ])
    .unwrap();
    assert_eq!(
        view,
        View::Where(where_key::WhereArgs {
            keys: vec!["user:42".into()],
            namespace: Some("shop".into()),
            policy: None,
            output: OutputFormat::Json,
            cluster: ClusterArgs {
                kubeconfig: Some(PathBuf::from("/tmp/kc")),
                context: Some("staging".into()),
            },
        })
    );
    // Flags before the key, long forms, several keys, `--flag=value`.
    let View::Where(args) = parse(&[
        "where",
        "--namespace=shop",
        "--policy",
        "shop",
        "auth:1",
        "cart:{u42}:items",
    ])
    .unwrap() else {
        panic!("not where")
    };
    assert_eq!(args.keys, ["auth:1", "cart:{u42}:items"]);
    assert_eq!(args.namespace.as_deref(), Some("shop"));
    assert_eq!(args.policy.as_deref(), Some("shop"));
    assert_eq!(args.output, OutputFormat::Table);
    assert_eq!(args.cluster, ClusterArgs::default());
    // A key is required; -A belongs to status only.
    assert!(parse(&["where"]).is_err());
    assert!(parse(&["where", "k", "-A"]).is_err());
    assert!(parse(&["where", "k", "-o", "yaml"]).is_err());
}

#[test]
fn status_takes_a_namespace_or_all_of_them_and_kubectls_cluster_flags() {
    let View::Status(args) = parse(&["status", "-A", "--context", "prod"]).unwrap() else {
        panic!("not status")
    };
    assert!(args.all_namespaces);
    assert_eq!(args.namespace, None);
    assert_eq!(args.cluster.context.as_deref(), Some("prod"));
    assert_eq!(args.cluster.kubeconfig, None);

    let View::Status(args) = parse(&[
        "status",
        "--all-namespaces",
        "-n",
        "shop",
        "--kubeconfig=/k",
    ])
    .unwrap() else {
        panic!("not status")
    };
    // As with kubectl, -n is accepted alongside -A (and ignored).
    assert!(args.all_namespaces);
    assert_eq!(args.cluster.kubeconfig, Some(PathBuf::from("/k")));

    let View::Status(args) = parse(&["status", "-n", "shop", "shop", "-o", "json"]).unwrap() else {
        panic!("not status")
    };
    assert!(!args.all_namespaces);
    assert_eq!(args.namespace.as_deref(), Some("shop"));
    assert_eq!(args.policy.as_deref(), Some("shop"));
    assert_eq!(args.output, OutputFormat::Json);

    // A policy is in one namespace: not with -A.
    let err = parse(&["status", "-A", "shop"]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
}

#[test]
fn the_plugin_offers_the_views_only_and_names_itself_as_kubectl_fleet() {
    for component in ["operator", "sidecar", "rebalance", "crds"] {
        assert!(parse(&[component]).is_err(), "{component}");
    }
    let help = parse(&["where", "--help"]).unwrap_err().to_string();
    assert!(
        help.contains("Usage: kubectl fleet where [OPTIONS] <KEY>..."),
        "{help}"
    );
    for flag in ["--kubeconfig <FILE>", "--context <NAME>", "-n, --namespace"] {
        assert!(help.contains(flag), "{flag}\n{help}");
    }
}
