//! The CRDs against a real kube-apiserver: they install cleanly as structural schemas, the
//! examples are accepted, `kubectl get` shows the printer columns, and every invalid object
//! is refused with a message that names the offending field.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Output};

use support::ControlPlane;
use support::control_plane::{kubernetes_version, project_root};

fn run(mut cmd: Command) -> Output {
    cmd.output().expect("running a command")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn crds_directory_matches_the_generated_crds() {
    let generated = redis_fleet::api::crds_yaml().unwrap();
    let committed =
        std::fs::read_to_string(project_root().join("crds/redis-fleet.crds.yaml")).unwrap();
    assert!(
        generated == committed,
        "crds/redis-fleet.crds.yaml is out of date: run `make crds` and commit the result"
    );
}

#[tokio::test]
async fn control_plane_is_a_real_apiserver_of_the_built_version() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.git_version, kubernetes_version());
}

#[tokio::test]
async fn crds_install_as_structural_schemas_without_warnings() {
    let cp = ControlPlane::shared();
    let mut cmd = cp.kubectl();
    cmd.args([
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=crds-test",
        "-f",
    ])
    .arg(project_root().join("crds"));
    let out = run(cmd);
    assert!(
        out.status.success(),
        "kubectl apply -f crds/: {}",
        text(&out.stderr)
    );
    assert!(
        !text(&out.stderr).to_lowercase().contains("warning"),
        "warnings while applying the CRDs: {}",
        text(&out.stderr)
    );

    let client = cp.client().await;
    let api: kube::Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = kube::Api::all(client);
    for name in [
        "redisinstances.redisfleet.io",
        "cachepolicies.redisfleet.io",
    ] {
        support::control_plane::wait_for_established(&api, name).await;
        let crd = api.get(name).await.unwrap();
        let conditions = crd.status.unwrap().conditions.unwrap_or_default();
        for c in &conditions {
            assert!(
                !(c.type_ == "NonStructuralSchema" && c.status == "True"),
                "{name} is not structural: {}",
                c.message.as_deref().unwrap_or_default()
            );
        }
    }
}

#[tokio::test]
async fn examples_apply_and_kubectl_get_shows_the_columns() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let ns = cp.namespace(&client, "examples").await;

    let mut cmd = cp.kubectl();
    cmd.args(["apply", "-n", &ns, "-f"])
        .arg(project_root().join("examples"));
    let out = run(cmd);
    assert!(
        out.status.success(),
        "kubectl apply -f examples/: {}",
        text(&out.stderr)
    );
    let applied = text(&out.stdout);
    for object in [
        "redisinstance.redisfleet.io/primary",
        "redisinstance.redisfleet.io/secondary",
        "redisinstance.redisfleet.io/tertiary",
        "cachepolicy.redisfleet.io/shop",
    ] {
        assert!(applied.contains(object), "{object} not applied: {applied}");
    }

    let mut cmd = cp.kubectl();
    cmd.args(["get", "ri", "-n", &ns]);
    let out = run(cmd);
    assert!(
        out.status.success(),
        "kubectl get ri: {}",
        text(&out.stderr)
    );
    let table = text(&out.stdout);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "READY", "PHASE", "USED", "CAPACITY", "USAGE%", "HIT%", "LATENCY", "AGE"
        ],
        "{table}"
    );
    assert!(
        table.contains("primary") && table.contains("secondary"),
        "{table}"
    );

    let mut cmd = cp.kubectl();
    cmd.args(["get", "redis-fleet", "-n", &ns, "-o", "wide"]);
    let out = run(cmd);
    let wide = text(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl get redis-fleet: {}",
        text(&out.stderr)
    );
    assert!(wide.contains("TIER") && wide.contains("ENDPOINT"), "{wide}");
    // The Ready condition's message, for both kinds, only under -o wide.
    assert_eq!(wide.matches("MESSAGE").count(), 2, "{wide}");
    assert!(!table.contains("MESSAGE"), "{table}");
    assert!(wide.contains("cachepolicy.redisfleet.io/shop"), "{wide}");

    // Defaults are applied by the API server, so users see the effective values.
    let mut cmd = cp.kubectl();
    cmd.args([
        "get",
        "ri",
        "secondary",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.health.interval} {.spec.weight} {.spec.external.port}",
    ]);
    assert_eq!(text(&run(cmd).stdout), "5s 100 6379");
}

/// One object that must be refused, and what the refusal must say.
struct Invalid {
    case: &'static str,
    yaml: String,
    /// Fragments that must all appear in kubectl's error (the field path first).
    expect: &'static [&'static str],
}

fn instance(spec: &str) -> String {
    format!(
        "apiVersion: redisfleet.io/v1alpha1\nkind: RedisInstance\nmetadata:\n  name: bad\nspec:\n{}",
        indent(spec)
    )
}

fn policy(spec: &str) -> String {
    format!(
        "apiVersion: redisfleet.io/v1alpha1\nkind: CachePolicy\nmetadata:\n  name: bad\nspec:\n{}",
        indent(spec)
    )
}

fn indent(block: &str) -> String {
    block
        .trim_matches('\n')
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect()
}

fn invalid_objects() -> Vec<Invalid> {
    let ext = "external: {host: redis.example.com, port: 6379}\n";
    vec![
        Invalid {
            case: "both external and managed",
            yaml: instance(&format!("{ext}managed: {{maxMemory: 30Mi}}")),
            expect: &[
                "spec: Invalid value",
                "exactly one of spec.external",
                "not both",
            ],
        },
        Invalid {
            case: "neither external nor managed",
            yaml: instance("capacity: 30Mi"),
            expect: &[
                "spec: Invalid value",
                "exactly one of spec.external",
                "neither is set",
            ],
        },
        Invalid {
            case: "port 0",
            yaml: instance("external: {host: redis.example.com, port: 0}"),
            expect: &["spec.external.port", "should be greater than or equal to 1"],
        },
        Invalid {
            case: "port above 65535",
            yaml: instance("external: {host: redis.example.com, port: 70000}"),
            expect: &[
                "spec.external.port",
                "should be less than or equal to 65535",
            ],
        },
        Invalid {
            case: "empty host",
            yaml: instance("external: {host: \"\"}"),
            expect: &["spec.external.host", "at least 1 chars long"],
        },
        Invalid {
            case: "zero capacity",
            yaml: instance(&format!("{ext}capacity: \"0\"")),
            expect: &["spec.capacity", "must be a positive whole number of bytes"],
        },
        Invalid {
            case: "negative capacity",
            yaml: instance(&format!("{ext}capacity: -30Mi")),
            expect: &["spec.capacity", "must be a positive whole number of bytes"],
        },
        Invalid {
            case: "capacity that is not a quantity",
            yaml: instance(&format!("{ext}capacity: thirty")),
            expect: &["spec.capacity", "must be a positive whole number of bytes"],
        },
        Invalid {
            case: "fractional maxMemory",
            yaml: instance("managed: {maxMemory: \"0.5\"}"),
            expect: &[
                "spec.managed.maxMemory",
                "must be a positive whole number of bytes",
            ],
        },
        Invalid {
            case: "unknown eviction policy",
            yaml: instance("managed: {maxMemory: 30Mi, evictionPolicy: lru}"),
            expect: &["spec.managed.evictionPolicy", "Unsupported value: \"lru\""],
        },
        Invalid {
            case: "weight of the wrong type",
            yaml: instance(&format!("{ext}weight: heavy")),
            expect: &["spec.weight", "must be of type integer"],
        },
        Invalid {
            case: "weight 0",
            yaml: instance(&format!("{ext}weight: 0")),
            expect: &["spec.weight", "should be greater than or equal to 1"],
        },
        Invalid {
            case: "interval that is not a duration",
            yaml: instance(&format!("{ext}health: {{interval: 5 seconds}}")),
            expect: &["spec.health.interval", "should match"],
        },
        Invalid {
            case: "zero timeout",
            yaml: instance(&format!("{ext}health: {{timeout: 0s}}")),
            expect: &["spec.health.timeout", "must be a positive duration"],
        },
        Invalid {
            case: "timeout longer than the interval",
            yaml: instance(&format!("{ext}health: {{interval: 1s, timeout: 2s}}")),
            expect: &[
                "spec.health.timeout: Invalid value",
                "health.timeout must not exceed health.interval: 2s is longer than 1s",
            ],
        },
        Invalid {
            case: "failure threshold 0",
            yaml: instance(&format!("{ext}health: {{failureThreshold: 0}}")),
            expect: &["spec.health.failureThreshold", "greater than or equal to 1"],
        },
        Invalid {
            case: "insecureSkipVerify without TLS",
            yaml: instance(
                "external: {host: redis.example.com, tls: {enabled: false, insecureSkipVerify: true}}",
            ),
            expect: &[
                "spec.external.tls.insecureSkipVerify: Forbidden",
                "insecureSkipVerify is only meaningful",
            ],
        },
        Invalid {
            case: "misspelt field",
            yaml: instance("external: {host: redis.example.com, prot: 6379}"),
            expect: &["unknown field \"spec.external.prot\""],
        },
        Invalid {
            case: "threshold 0",
            yaml: policy("balancing: {capacityThreshold: 0}"),
            expect: &[
                "spec.balancing.capacityThreshold",
                "greater than or equal to 1",
            ],
        },
        Invalid {
            case: "threshold above 100",
            yaml: policy("balancing: {capacityThreshold: 101}"),
            expect: &[
                "spec.balancing.capacityThreshold",
                "less than or equal to 100",
            ],
        },
        Invalid {
            case: "unknown strategy",
            yaml: policy("balancing: {strategy: RoundRobin}"),
            expect: &[
                "spec.balancing.strategy",
                "Unsupported value: \"RoundRobin\"",
            ],
        },
        Invalid {
            case: "cooldown that is not a duration",
            yaml: policy("balancing: {rebalance: {cooldown: 5 minutes}}"),
            expect: &["spec.balancing.rebalance.cooldown", "should match"],
        },
        Invalid {
            case: "negative latency headroom",
            yaml: policy("balancing: {rebalance: {latencyHeadroomMicroseconds: -1}}"),
            expect: &[
                "spec.balancing.rebalance.latencyHeadroomMicroseconds",
                "should be greater than or equal to 0",
            ],
        },
        Invalid {
            case: "ttl default above max",
            yaml: policy(
                "categories:\n- {name: auth, keyPrefixes: [\"auth:\"], ttl: {default: 2h, max: 1h}}",
            ),
            expect: &[
                "spec.categories[0].ttl.default: Invalid value",
                "ttl.default must not exceed ttl.max: 2h is longer than 1h",
            ],
        },
        Invalid {
            case: "adaptive ttl without max",
            yaml: policy(
                "categories:\n- {name: auth, keyPrefixes: [\"auth:\"], ttl: {default: 1h, adaptive: true}}",
            ),
            expect: &[
                "spec.categories[0].ttl.max: Required value",
                "ttl.adaptive needs ttl.max",
            ],
        },
        Invalid {
            case: "duplicate category names",
            yaml: policy(
                "categories:\n- {name: auth, keyPrefixes: [\"auth:\"]}\n- {name: auth, keyPrefixes: [\"session:\"]}",
            ),
            expect: &["spec.categories[1]", "Duplicate value"],
        },
        Invalid {
            case: "category name that is not a DNS label",
            yaml: policy("categories:\n- {name: Auth_Data, keyPrefixes: [\"auth:\"]}"),
            expect: &["spec.categories[0].name", "should match"],
        },
        Invalid {
            case: "category named default",
            yaml: policy("categories:\n- {name: default, keyPrefixes: [\"x:\"]}"),
            expect: &[
                "spec.categories[0].name: Forbidden",
                "'default' is reserved",
            ],
        },
        Invalid {
            case: "no key prefixes",
            yaml: policy("categories:\n- {name: auth, keyPrefixes: []}"),
            expect: &["spec.categories[0].keyPrefixes", "at least 1 items"],
        },
        Invalid {
            case: "empty key prefix",
            yaml: policy("categories:\n- {name: auth, keyPrefixes: [\"\"]}"),
            expect: &["spec.categories[0].keyPrefixes[0]", "at least 1 chars long"],
        },
        Invalid {
            case: "prefix shared by two categories",
            yaml: policy(
                "categories:\n- {name: auth, keyPrefixes: [\"auth:\", \"session:\"]}\n- {name: login, keyPrefixes: [\"session:\"]}",
            ),
            expect: &[
                "spec.categories: Invalid value",
                "a key prefix may belong to one category only",
            ],
        },
        Invalid {
            case: "prefix listed twice in one category",
            yaml: policy("categories:\n- {name: auth, keyPrefixes: [\"auth:\", \"auth:\"]}"),
            expect: &["spec.categories[0].keyPrefixes[1]: Duplicate value: \"auth:\""],
        },
        Invalid {
            case: "key prefix too long",
            yaml: policy(&format!(
                "categories:\n- {{name: auth, keyPrefixes: [\"{}\"]}}",
                "a".repeat(129)
            )),
            expect: &["spec.categories[0].keyPrefixes[0]", "Too long"],
        },
        Invalid {
            case: "fallback tier equal to tier",
            yaml: policy(
                "categories:\n- {name: auth, keyPrefixes: [\"auth:\"], tier: hot, fallbackTier: hot}",
            ),
            expect: &[
                "spec.categories[0].fallbackTier: Invalid value",
                "fallbackTier must differ from tier: both are hot",
            ],
        },
        Invalid {
            case: "default category fallback tier equal to tier",
            yaml: policy("defaultCategory: {tier: warm, fallbackTier: warm}"),
            expect: &[
                "spec.defaultCategory.fallbackTier: Invalid value",
                "fallbackTier must differ from tier: both are warm",
            ],
        },
        Invalid {
            case: "categories of the wrong type",
            yaml: policy("categories: auth"),
            expect: &["spec.categories", "must be of type array"],
        },
    ]
}

#[tokio::test]
async fn invalid_objects_are_refused_with_the_field_named() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let ns = cp.namespace(&client, "invalid").await;

    let cases = invalid_objects();
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for case in &cases {
        let path = cp
            .dir
            .join(format!("invalid-{}.yaml", case.case.replace(' ', "-")));
        std::fs::write(&path, &case.yaml).unwrap();
        let mut cmd = cp.kubectl();
        cmd.args(["create", "-n", &ns, "-f"]).arg(&path);
        let out = run(cmd);
        let stderr = text(&out.stderr);
        if out.status.success() {
            failures.push(format!("{}: accepted\n{}", case.case, case.yaml));
            continue;
        }
        for fragment in case.expect {
            if !stderr.contains(fragment) {
                failures.push(format!(
                    "{}: error does not contain {fragment:?}\n  error: {stderr}",
                    case.case
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn conditions_have_the_upstream_bounds() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let ns = cp.namespace(&client, "conditions").await;
    let path = cp.dir.join(format!("{ns}-instance.yaml"));
    std::fs::write(
        &path,
        instance("external: {host: redis.example.com}").replace("name: bad", "name: good"),
    )
    .unwrap();
    let mut cmd = cp.kubectl();
    cmd.args(["create", "-n", &ns, "-f"]).arg(&path);
    let out = run(cmd);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let patch_status = |condition: &str| {
        let mut cmd = cp.kubectl();
        cmd.args([
            "patch",
            "redisinstance",
            "good",
            "-n",
            &ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &format!("{{\"status\": {{\"conditions\": [{condition}]}}}}"),
        ]);
        run(cmd)
    };
    let good = r#"{"type": "Ready", "status": "True", "reason": "Healthy", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}"#;
    let out = patch_status(good);
    assert!(out.status.success(), "{}", text(&out.stderr));

    for (case, condition, expect) in [
        (
            "status outside True/False/Unknown",
            good.replace("\"True\"", "\"Yes\""),
            "status.conditions[0].status: Unsupported value: \"Yes\"",
        ),
        (
            "empty reason",
            good.replace("\"Healthy\"", "\"\""),
            "status.conditions[0].reason",
        ),
        (
            "reason that is not CamelCase-like",
            good.replace("\"Healthy\"", "\"not healthy\""),
            "status.conditions[0].reason: Invalid value",
        ),
        (
            "type with a space",
            good.replace("\"Ready\"", "\"Is Ready\""),
            "status.conditions[0].type: Invalid value",
        ),
        (
            "type longer than 316",
            good.replace("\"Ready\"", &format!("\"{}\"", "R".repeat(317))),
            "status.conditions[0].type: Too long",
        ),
        (
            "message longer than 32768",
            good.replace(
                "\"message\": \"\"",
                &format!("\"message\": \"{}\"", "m".repeat(32769)),
            ),
            "status.conditions[0].message: Too long",
        ),
    ] {
        let out = patch_status(&condition);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{case}: accepted");
        assert!(stderr.contains(expect), "{case}: {stderr}");
    }
}

/// What the rebalance Job's progress report relies on (`write_progress`): a JSON patch of the
/// status whose `test` of the plan and attempt fails is refused with 422 and writes nothing;
/// one whose tests pass sets the fields, a `null` one (a cleared pacing note) reading as
/// absent.
#[tokio::test]
async fn a_progress_patch_for_another_attempt_is_refused_with_422_and_writes_nothing() {
    use kube::api::{Patch, PatchParams, PostParams};
    use redis_fleet::api::CachePolicy;
    use serde_json::json;

    let cp = ControlPlane::shared();
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let ns = cp.namespace(&client, "progress-patch").await;
    let policies: kube::Api<CachePolicy> = kube::Api::namespaced(client, &ns);
    let policy: CachePolicy = serde_json::from_value(json!({
        "apiVersion": "redisfleet.io/v1alpha1", "kind": "CachePolicy",
        "metadata": {"name": "shop"},
        "spec": {
            "instanceSelector": {"matchLabels": {"app.kubernetes.io/part-of": "shop"}},
            "routingConfigMap": "shop-redis-routing",
            "categories": [{"name": "auth", "keyPrefixes": ["auth:"], "tier": "hot"}],
        },
    }))
    .unwrap();
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let pp = PatchParams::default();
    policies
        .patch_status(
            "shop",
            &pp,
            &Patch::Merge(json!({"status": {"rebalance": {
                "phase": "Migrating", "planId": 7, "attempts": 2, "pacing": "slowed",
            }}})),
        )
        .await
        .unwrap();
    let report = |plan: i64, attempt: i32| {
        Patch::<()>::Json(
            serde_json::from_value(json!([
                {"op": "test", "path": "/status/rebalance/planId", "value": plan},
                {"op": "test", "path": "/status/rebalance/attempts", "value": attempt},
                {"op": "add", "path": "/status/rebalance/keysMoved", "value": 40},
                {"op": "add", "path": "/status/rebalance/pacing", "value": null},
            ]))
            .unwrap(),
        )
    };
    for (plan, attempt) in [(7, 1), (8, 2)] {
        match policies
            .patch_status("shop", &pp, &report(plan, attempt))
            .await
        {
            Err(kube::Error::Api(e)) => assert_eq!(e.code, 422, "{e:?}"),
            other => panic!("plan {plan} attempt {attempt}: {other:?}"),
        }
    }
    let r = policies
        .get_status("shop")
        .await
        .unwrap()
        .status
        .unwrap()
        .rebalance
        .unwrap();
    assert_eq!((r.keys_moved, r.pacing.as_deref()), (None, Some("slowed")));
    policies
        .patch_status("shop", &pp, &report(7, 2))
        .await
        .unwrap();
    let r = policies
        .get_status("shop")
        .await
        .unwrap()
        .status
        .unwrap()
        .rebalance
        .unwrap();
    assert_eq!((r.keys_moved, r.pacing), (Some(40), None));
}
