//! The RedisInstance reconciler against a real kube-apiserver and real redis-servers, with
//! the real `redis-fleet-operator` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use redis_fleet::api::redis_instance::{InstancePhase, RedisInstance};
use serde_json::json;
use support::operator::Operator;
use support::{ControlPlane, RedisOptions, RedisServer, wait_for};

const MB: u64 = 1024 * 1024;

fn phase(ri: &RedisInstance) -> Option<InstancePhase> {
    ri.status.as_ref().and_then(|s| s.phase)
}

fn condition<'a>(
    ri: &'a RedisInstance,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    ri.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

async fn create_instance(api: &Api<RedisInstance>, name: &str, spec: serde_json::Value) {
    let ri: RedisInstance = serde_json::from_value(json!({
        "apiVersion": "redisfleet.io/v1alpha1",
        "kind": "RedisInstance",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &ri).await.unwrap();
}

async fn create_secret(api: &Api<Secret>, name: &str, data: &[(&str, &str)]) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
    }))
    .unwrap();
    api.create(&PostParams::default(), &secret).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_instance_goes_ready_and_status_tracks_memory() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let ns = cp.namespace(&client, "ready").await;
    let server = RedisServer::start(RedisOptions::with_maxmemory(30 * MB));
    let _operator = Operator::start(cp, &ns);
    let api: Api<RedisInstance> = Api::namespaced(client.clone(), &ns);
    create_instance(
        &api,
        "primary",
        json!({"external": {"host": "127.0.0.1", "port": server.port}, "health": {"interval": "1s", "timeout": "500ms"}}),
    )
    .await;

    let ri = wait_for(
        &api,
        "primary",
        Duration::from_secs(20),
        "phase Ready",
        |ri| phase(ri) == Some(InstancePhase::Ready),
    )
    .await;
    let status = ri.status.unwrap();
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("127.0.0.1:{}", server.port).as_str())
    );
    assert!(status.redis_version.as_deref().unwrap().starts_with('7'));
    assert_eq!(
        status.memory.as_ref().unwrap().capacity_bytes as u64,
        30 * MB,
        "capacity comes from maxmemory"
    );
    assert_eq!(status.observed_generation, Some(1));

    // Write ~8 MiB and watch status follow INFO within one probe interval (plus the time a
    // status write takes to reach a watch).
    let mut conn = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let value = vec![b'x'; 100 * 1024];
    for i in 0..80 {
        let _: () = redis::cmd("SET")
            .arg(format!("user:{i}"))
            .arg(&value)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let expected = server.used_memory().await;
    assert!(expected > 8 * MB);
    let started = Instant::now();
    let ri = wait_for(
        &api,
        "primary",
        Duration::from_secs(10),
        "usedBytes near INFO used_memory",
        |ri| {
            let used = ri
                .status
                .as_ref()
                .and_then(|s| s.memory.as_ref())
                .map_or(0, |m| m.used_bytes as u64);
            used.abs_diff(expected) < 512 * 1024
        },
    )
    .await;
    let tracked_after = started.elapsed();
    assert!(
        tracked_after < Duration::from_millis(2500),
        "status lagged INFO by {tracked_after:?}, more than one probe interval (1s) plus a write"
    );
    let status = ri.status.unwrap();
    assert_eq!(status.keys, Some(80));
    assert!(status.memory.unwrap().used_percent.unwrap() >= 26);

    let out = cp
        .kubectl()
        .args(["get", "ri", "primary", "-n", &ns])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[0], "primary");
    assert_eq!(row[1], "True", "the Ready condition: {table}");
    assert_eq!(row[2], "Ready", "the phase: {table}");
    assert!(row[3].ends_with("Mi") && row[4] == "30.0Mi", "{table}");
    assert!(row[5].parse::<u32>().unwrap() >= 26, "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_secrets_wrong_password_and_rotation() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let ns = cp.namespace(&client, "auth").await;
    let admin_password = "admin-pass-4242";
    let server = RedisServer::start(RedisOptions {
        maxmemory: 30 * MB,
        password: Some(admin_password.into()),
        ..RedisOptions::default()
    });
    let app_password = "app-pass-1337";
    let out = server
        .cli()
        .args([
            "ACL",
            "SETUSER",
            "app",
            "on",
            &format!(">{app_password}"),
            "~*",
            "+@all",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    create_secret(
        &secrets,
        "acl",
        &[("username", "app"), ("password", app_password)],
    )
    .await;
    let wrong = "wrong-pass-9876";
    create_secret(&secrets, "rotating", &[("password", wrong)]).await;
    // Secrets are read again on a timer, not watched: a short period for the rotation below.
    let mut operator = Operator::start_with(cp, &ns, &["--secret-reread=2s"]);
    let api: Api<RedisInstance> = Api::namespaced(client.clone(), &ns);
    let health = json!({"interval": "1s", "timeout": "500ms", "failureThreshold": 2, "recoveryThreshold": 1});
    create_instance(
        &api,
        "acl-user",
        json!({"external": {"host": "127.0.0.1", "port": server.port,
                "usernameSecretRef": {"name": "acl", "key": "username"},
                "passwordSecretRef": {"name": "acl", "key": "password"}},
               "health": health}),
    )
    .await;
    create_instance(
        &api,
        "rotating",
        json!({"external": {"host": "127.0.0.1", "port": server.port,
                "passwordSecretRef": {"name": "rotating", "key": "password"}},
               "health": health}),
    )
    .await;

    wait_for(
        &api,
        "acl-user",
        Duration::from_secs(20),
        "Ready with the ACL user",
        |ri| phase(ri) == Some(InstancePhase::Ready),
    )
    .await;
    let ri = wait_for(
        &api,
        "rotating",
        Duration::from_secs(20),
        "AuthenticationFailed",
        |ri| {
            condition(ri, "Reachable")
                .is_some_and(|c| c.status == "False" && c.reason == "AuthenticationFailed")
        },
    )
    .await;
    let ready = condition(&ri, "Ready").unwrap();
    assert_eq!(ready.status, "False", "{ri:?}");

    // The wrong password appears nowhere: status, events, logs, metrics.
    let status_json = serde_json::to_string(&ri.status).unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let events_json =
        serde_json::to_string(&events.list(&ListParams::default()).await.unwrap().items).unwrap();
    let everything = [
        status_json,
        events_json,
        operator.logs(),
        operator.metrics(),
    ];
    for (where_, text) in ["status", "events", "logs", "metrics"]
        .iter()
        .zip(&everything)
    {
        for secret in [wrong, app_password, admin_password] {
            assert!(!text.contains(secret), "a password leaked into {where_}");
        }
    }

    // Rotate the Secret: the instance recovers without restarting anything, once the operator
    // reads the Secret again (--secret-reread).
    let pid = operator.pid();
    let patch = json!({"stringData": {"password": admin_password}});
    secrets
        .patch(
            "rotating",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    wait_for(
        &api,
        "rotating",
        Duration::from_secs(20),
        "Ready after rotation",
        |ri| phase(ri) == Some(InstancePhase::Ready),
    )
    .await;
    assert!(operator.is_running());
    assert_eq!(operator.pid(), pid);
    assert!(!operator.logs().contains(admin_password));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instance_goes_unreachable_within_budget_and_recovers() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let ns = cp.namespace(&client, "kill").await;
    let mut server = RedisServer::start(RedisOptions::with_maxmemory(30 * MB));
    let _operator = Operator::start(cp, &ns);
    let api: Api<RedisInstance> = Api::namespaced(client.clone(), &ns);
    let (interval, timeout, failures) = (Duration::from_secs(1), Duration::from_millis(500), 3u32);
    create_instance(
        &api,
        "victim",
        json!({"external": {"host": "127.0.0.1", "port": server.port},
               "health": {"interval": "1s", "timeout": "500ms", "failureThreshold": failures, "recoveryThreshold": 2}}),
    )
    .await;
    wait_for(&api, "victim", Duration::from_secs(20), "Ready", |ri| {
        phase(ri) == Some(InstancePhase::Ready)
    })
    .await;

    server.kill();
    let killed = Instant::now();
    let ri = wait_for(
        &api,
        "victim",
        Duration::from_secs(20),
        "Unreachable",
        |ri| phase(ri) == Some(InstancePhase::Unreachable),
    )
    .await;
    let took = killed.elapsed();
    // The health budget: failureThreshold probes, one interval apart, each up to the timeout,
    // plus one second for the status write to reach us.
    let budget = interval * failures + timeout + Duration::from_secs(1);
    assert!(
        took <= budget,
        "Unreachable after {took:?}, budget {budget:?}"
    );
    assert_eq!(
        ri.status.as_ref().unwrap().consecutive_failures,
        failures as i32
    );
    assert_eq!(condition(&ri, "Ready").unwrap().reason, "ConnectionRefused");

    server.restart();
    let restarted = Instant::now();
    let ri = wait_for(
        &api,
        "victim",
        Duration::from_secs(20),
        "Ready again",
        |ri| phase(ri) == Some(InstancePhase::Ready),
    )
    .await;
    assert!(ri.status.as_ref().unwrap().consecutive_successes >= 2);
    assert!(
        restarted.elapsed() >= interval,
        "recovery needs two good probes, one interval apart"
    );

    // Events for both transitions, on the instance.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = events.list(&ListParams::default()).await.unwrap();
        let reasons: Vec<(String, String)> = list
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("victim"))
            .map(|e| {
                (
                    e.reason.clone().unwrap_or_default(),
                    e.type_.clone().unwrap_or_default(),
                )
            })
            .collect();
        if reasons.contains(&("Unreachable".into(), "Warning".into()))
            && reasons.contains(&("Recovered".into(), "Normal".into()))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "events missing: {reasons:?}\n{:#?}",
            list.items
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_instance_objects_and_garbage_collection() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let ns = cp.namespace(&client, "managed").await;
    let _operator = Operator::start(cp, &ns);
    let api: Api<RedisInstance> = Api::namespaced(client.clone(), &ns);
    create_instance(
        &api,
        "cache",
        json!({"managed": {"image": "redis:7.2-alpine", "maxMemory": "64Mi", "evictionPolicy": "allkeys-lfu",
                           "storage": {"size": "1Gi"}}}),
    )
    .await;

    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let svc_api: Api<Service> = Api::namespaced(client.clone(), &ns);
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let sts = wait_for(
        &sts_api,
        "cache-redis",
        Duration::from_secs(20),
        "StatefulSet",
        |_| true,
    )
    .await;
    let ri = api.get("cache").await.unwrap();
    let uid = ri.metadata.uid.clone().unwrap();
    let owned = |meta: &kube::api::ObjectMeta| {
        let o = &meta.owner_references.as_ref().expect("owner references")[0];
        assert_eq!(
            (
                o.kind.as_str(),
                o.name.as_str(),
                o.uid.as_str(),
                o.controller
            ),
            ("RedisInstance", "cache", uid.as_str(), Some(true))
        );
        assert_eq!(
            meta.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            "redis-fleet"
        );
    };

    owned(&sts.metadata);
    let spec = &sts.spec;
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.service_name.as_deref(), Some("cache-redis"));
    let pod = spec.template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("redis:7.2-alpine"));
    assert_eq!(
        c.args.as_ref().unwrap(),
        &[
            "/etc/redis/redis.conf",
            "--requirepass",
            "$(REDIS_PASSWORD)"
        ]
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(
        (
            sc.run_as_non_root,
            sc.read_only_root_filesystem,
            sc.allow_privilege_escalation
        ),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
        &["ALL"]
    );
    let pw = c.env.as_ref().unwrap()[0]
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (pw.name.as_str(), pw.key.as_str()),
        ("cache-redis-auth", "password")
    );
    assert!(c.readiness_probe.as_ref().unwrap().exec.is_some());
    assert!(c.liveness_probe.as_ref().unwrap().tcp_socket.is_some());
    let pvc = &spec.volume_claim_templates.as_ref().unwrap()[0];
    assert_eq!(
        pvc.spec
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"]
            .0,
        "1Gi"
    );

    let svc = svc_api.get("cache-redis").await.unwrap();
    owned(&svc.metadata);
    let port = &svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!(port.port, 6379);
    assert_eq!(
        svc.spec.as_ref().unwrap().selector.as_ref().unwrap()["redisfleet.io/instance"],
        "cache"
    );

    let cm = cm_api.get("cache-redis-config").await.unwrap();
    owned(&cm.metadata);
    let conf = &cm.data.as_ref().unwrap()["redis.conf"];
    assert!(
        conf.contains("maxmemory 67108864") && conf.contains("maxmemory-policy allkeys-lfu"),
        "{conf}"
    );
    assert!(!conf.contains("requirepass"));

    let secret = secret_api.get("cache-redis-auth").await.unwrap();
    owned(&secret.metadata);
    let password = secret.data.as_ref().unwrap()["password"].0.clone();
    assert_eq!(password.len(), 64, "a generated 32-byte hex password");

    // No kubelet here: the pod never runs, so the instance waits in Pending.
    let ri = wait_for(
        &api,
        "cache",
        Duration::from_secs(20),
        "Pending with a reason",
        |ri| condition(ri, "Ready").is_some(),
    )
    .await;
    assert_eq!(phase(&ri), Some(InstancePhase::Pending));
    assert_eq!(
        ri.status.as_ref().unwrap().endpoint.as_deref(),
        Some(format!("cache-redis.{ns}.svc:6379").as_str())
    );

    // The password Secret is never regenerated by later reconciles.
    let ri_patch = json!({"spec": {"managed": {"maxMemory": "128Mi"}}});
    api.patch(
        "cache",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&ri_patch),
    )
    .await
    .unwrap();
    wait_for(
        &cm_api,
        "cache-redis-config",
        Duration::from_secs(20),
        "new maxmemory",
        |cm| cm.data.as_ref().unwrap()["redis.conf"].contains("maxmemory 134217728"),
    )
    .await;
    assert_eq!(
        secret_api
            .get("cache-redis-auth")
            .await
            .unwrap()
            .data
            .unwrap()["password"]
            .0,
        password
    );

    // Deleting the RedisInstance removes everything, through the real garbage collector.
    api.delete("cache", &DeleteParams::background())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = (
            sts_api.get_opt("cache-redis").await.unwrap().is_some(),
            svc_api.get_opt("cache-redis").await.unwrap().is_some(),
            cm_api
                .get_opt("cache-redis-config")
                .await
                .unwrap()
                .is_some(),
            secret_api
                .get_opt("cache-redis-auth")
                .await
                .unwrap()
                .is_some(),
        );
        if left == (false, false, false, false) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "children left after deletion (sts, svc, cm, secret): {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_per_instance_series_and_sigterm_stops_cleanly() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let ns = cp.namespace(&client, "metrics").await;
    let server = RedisServer::start(RedisOptions::with_maxmemory(30 * MB));
    let mut operator = Operator::start_with(cp, &ns, &["--log-format", "json"]);
    let api: Api<RedisInstance> = Api::namespaced(client.clone(), &ns);
    create_instance(&api, "m1", json!({"external": {"host": "127.0.0.1", "port": server.port}, "health": {"interval": "1s", "timeout": "500ms"}})).await;
    create_instance(&api, "dead", json!({"external": {"host": "127.0.0.1", "port": 1}, "capacity": "30Mi", "health": {"interval": "1s", "timeout": "500ms"}})).await;
    wait_for(&api, "m1", Duration::from_secs(20), "Ready", |ri| {
        phase(ri) == Some(InstancePhase::Ready)
    })
    .await;
    wait_for(
        &api,
        "dead",
        Duration::from_secs(20),
        "a failed probe",
        |ri| {
            ri.status
                .as_ref()
                .is_some_and(|s| s.consecutive_failures >= 1)
        },
    )
    .await;

    // Three hits and one miss.
    let mut c = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    // In one transaction, so that no probe falls between them.
    let _: (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ) = redis::pipe()
        .atomic()
        .get("k")
        .get("k")
        .get("k")
        .get("missing")
        .query_async(&mut c)
        .await
        .unwrap();
    // Redis's own counters, exported as they are for rate(): three hits and one miss.
    let labels = format!("namespace=\"{ns}\",redis_instance=\"m1\"");
    let counters = [
        format!("redisfleet_instance_keyspace_hits_total{{{labels}}} 3"),
        format!("redisfleet_instance_keyspace_misses_total{{{labels}}} 1"),
        format!("redisfleet_instance_evicted_keys_total{{{labels}}} 0"),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !counters.iter().all(|c| operator.metrics().contains(c)) {
        assert!(
            Instant::now() < deadline,
            "missing {counters:?}\n{}",
            operator.metrics()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let m = operator.metrics();
    for series in [
        format!("redisfleet_instance_up{{{labels}}} 1"),
        format!("redisfleet_instance_capacity_bytes{{{labels}}} {}", 30 * MB),
        format!("redisfleet_instance_used_bytes{{{labels}}} "),
        format!("redisfleet_instance_usage_ratio{{{labels}}} "),
        format!("redisfleet_instance_commands_processed_total{{{labels}}} "),
        format!("redisfleet_instance_probe_latency_seconds_count{{{labels}}} "),
        format!("redisfleet_instance_up{{namespace=\"{ns}\",redis_instance=\"dead\"}} 0"),
        format!(
            "redisfleet_instance_probe_errors_total{{namespace=\"{ns}\",redis_instance=\"dead\",reason=\"ConnectionRefused\"}} "
        ),
        "redisfleet_reconcile_total{controller=\"RedisInstance\"} ".to_owned(),
        "redisfleet_reconcile_duration_seconds_count{controller=\"RedisInstance\"} ".to_owned(),
    ] {
        assert!(m.contains(&series), "missing {series}\n{m}");
    }
    // A deleted instance's series go, its probe errors by reason too.
    api.delete("dead", &Default::default()).await.unwrap();
    let dead = "redis_instance=\"dead\"";
    let deadline = Instant::now() + Duration::from_secs(30);
    while operator.metrics().contains(dead) {
        assert!(
            Instant::now() < deadline,
            "the deleted instance's series stay\n{}",
            operator.metrics()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        operator
            .metrics()
            .contains(&format!("redisfleet_instance_up{{{labels}}} 1"))
    );
    // JSON logs, one object per line.
    let logs = operator.logs();
    let first = logs.lines().next().unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "not JSON: {first}"
    );

    let started = Instant::now();
    let pid = operator.pid().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while operator.is_running() {
        assert!(
            Instant::now() < deadline,
            "operator ignored SIGTERM\n{}",
            operator.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        operator.logs().contains("stopped"),
        "{}",
        operator.log_tail(10)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_from_a_secret_system_roots_and_insecure_skip_verify() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    cp.install_crds(&client).await;
    let ns = cp.namespace(&client, "tls").await;
    let server = RedisServer::start(RedisOptions {
        maxmemory: 30 * MB,
        tls: true,
        ..RedisOptions::default()
    });
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let ca = String::from_utf8(server.ca_pem()).unwrap();
    create_secret(&secrets, "redis-ca", &[("ca.crt", &ca)]).await;
    let _operator = Operator::start(cp, &ns);
    let api: Api<RedisInstance> = Api::namespaced(client.clone(), &ns);
    let health = json!({"interval": "1s", "timeout": "500ms", "failureThreshold": 1});
    let with_tls = |tls: serde_json::Value| json!({"external": {"host": "127.0.0.1", "port": server.port, "tls": tls}, "health": health});
    create_instance(
        &api,
        "ca-from-secret",
        with_tls(json!({"enabled": true, "caSecretRef": {"name": "redis-ca", "key": "ca.crt"}})),
    )
    .await;
    create_instance(&api, "system-roots", with_tls(json!({"enabled": true}))).await;
    create_instance(
        &api,
        "insecure",
        with_tls(json!({"enabled": true, "insecureSkipVerify": true})),
    )
    .await;
    create_instance(
        &api,
        "plain-to-tls",
        json!({"external": {"host": "127.0.0.1", "port": server.port}, "health": health}),
    )
    .await;

    wait_for(
        &api,
        "ca-from-secret",
        Duration::from_secs(20),
        "Ready over verified TLS",
        |ri| phase(ri) == Some(InstancePhase::Ready),
    )
    .await;
    wait_for(
        &api,
        "insecure",
        Duration::from_secs(20),
        "Ready without verification",
        |ri| phase(ri) == Some(InstancePhase::Ready),
    )
    .await;
    // The test CA is not among the system roots: verification must fail, clearly.
    let ri = wait_for(
        &api,
        "system-roots",
        Duration::from_secs(20),
        "TLS failure",
        |ri| phase(ri) == Some(InstancePhase::Unreachable),
    )
    .await;
    let reason = &condition(&ri, "Reachable").unwrap().reason;
    assert_eq!(reason, "TLSError", "{ri:#?}");
    wait_for(
        &api,
        "plain-to-tls",
        Duration::from_secs(20),
        "no answer to plain text",
        |ri| phase(ri) == Some(InstancePhase::Unreachable),
    )
    .await;
}
