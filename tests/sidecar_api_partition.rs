//! A sidecar that follows its routing table through the API (a pod without the table mounted)
//! loses its connections to the API server without a word: a NAT or conntrack entry dropped,
//! a partition, packets that stop arriving and no reset. Nothing tells the sidecar; only its
//! own bounds can. Once the network heals it must follow the table again (a sidecar left on
//! an old table is fenced off by the instances: its clients' commands fail until it catches
//! up), and read its Secrets again. Also: the API client honours a kubeconfig's `tls-server-name`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use redis::AsyncCommands;
use redis_fleet::routing::config_map::contents;
use redis_fleet::routing::table::{RoutingTable, SCHEMA_VERSION, TtlRules};
use support::relay::Relay;
use support::sidecar::{Sidecar, category, endpoint, table};
use support::{ControlPlane, RedisOptions, RedisServer};

const ROUTING: &str = "routing";
const SECRET: &str = "main-redis";

/// The table, version `version`, routing everything to `server` (its password in [`SECRET`]).
fn routing(version: u64, server: &RedisServer) -> RoutingTable {
    table(
        version,
        vec![("main", endpoint(server, Some(SECRET)))],
        vec![category(
            "default",
            &[],
            TtlRules::default(),
            &[(0, 16383, "main")],
        )],
    )
}

fn config_map(table: &RoutingTable) -> ConfigMap {
    let (data, binary_data) = contents(table, SCHEMA_VERSION);
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROUTING.to_owned()),
            ..Default::default()
        },
        data,
        binary_data,
        ..Default::default()
    }
}

/// The routing version the sidecar reports (0 before it loaded one).
fn loaded_version(sidecar: &Sidecar) -> u64 {
    support::series_value(&sidecar.metrics(), "redisfleet_sidecar_routing_version")
        .map_or(0, |v| v as u64)
}

/// Waits up to `within` for the sidecar to load `version`; whether it did.
async fn loads(sidecar: &Sidecar, version: u64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if loaded_version(sidecar) >= version {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_whose_api_connections_were_lost_silently_follows_the_table_once_the_network_heals()
 {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace(&client, "partition").await;
    let server = RedisServer::start(RedisOptions {
        password: Some("s3cret".into()),
        ..Default::default()
    });
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SECRET.to_owned()),
            ..Default::default()
        },
        data: Some([("password".to_owned(), ByteString(b"s3cret".to_vec()))].into()),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    maps.create(&PostParams::default(), &config_map(&routing(1, &server)))
        .await
        .unwrap();

    // The sidecar reaches the API server only through the relay.
    let upstream: std::net::SocketAddr =
        cp.server.strip_prefix("https://").unwrap().parse().unwrap();
    let relay = Relay::start(upstream).await;
    let kubeconfig = support::process::temp_dir("partition").join("kubeconfig");
    let text = std::fs::read_to_string(&cp.kubeconfig).unwrap();
    std::fs::write(
        &kubeconfig,
        text.replace(&cp.server, &format!("https://127.0.0.1:{}", relay.port)),
    )
    .unwrap();
    let sidecar = {
        let (kubeconfig, ns) = (kubeconfig.clone(), ns.clone());
        tokio::task::spawn_blocking(move || {
            Sidecar::follow_through(&kubeconfig, &ns, ROUTING, "app-1")
        })
        .await
        .unwrap()
    };
    assert!(
        loads(&sidecar, 1, Duration::from_secs(30)).await,
        "the sidecar did not load the first table: {}",
        sidecar.log_tail(20)
    );
    let mut app = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = app.set("before", "1").await.unwrap();

    // Every connection it holds now is lost, and the table changes meanwhile.
    let before_cut = relay.accepted();
    relay.cut();
    maps.replace(
        ROUTING,
        &PostParams::default(),
        &config_map(&routing(2, &server)),
    )
    .await
    .unwrap();
    assert!(
        !loads(&sidecar, 2, Duration::from_secs(5)).await,
        "the sidecar saw a table through a cut network: the test does not cut it"
    );
    // Long enough for the sidecar to notice (a ping unanswered for 20 s, one every 30 s) and
    // to try new connections while the network is still down (lost too: only their bounds
    // free them), and for its Secret reads (every 30 s) to start on lost connections.
    tokio::time::sleep(Duration::from_secs(65)).await;
    assert_eq!(loaded_version(&sidecar), 1);
    let tried = relay.accepted() - before_cut;
    assert!(
        tried > 0,
        "in 70 s the sidecar did not notice that its API connection was lost\n{}",
        sidecar.log_tail(30)
    );
    relay.heal();

    // Once the network is back the sidecar notices on its own, within its bounds (a minute
    // for a lost connection, plus the watch's backoff), and follows the table again.
    let healed = Instant::now();
    assert!(
        loads(&sidecar, 2, Duration::from_secs(150)).await,
        "the sidecar still routes by version {} {:?} after the network healed: its API \
         connections were lost and it waits on them for ever\n{}",
        loaded_version(&sidecar),
        healed.elapsed(),
        sidecar.log_tail(30)
    );
    eprintln!(
        "table version 2 loaded {:.1} s after the network healed ({tried} connections tried \
         during the cut, {} in all)",
        healed.elapsed().as_secs_f64(),
        relay.accepted()
    );
    // And its Secret reads work again: a new password, rotated in the Secret and the server,
    // reaches the sidecar's connections.
    let patch = serde_json::json!({"data": {"password": ByteString(b"n3w".to_vec())}});
    secrets
        .patch(SECRET, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let mut admin = server.connection().await;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("n3w")
        .query_async(&mut admin)
        .await
        .unwrap();
    let () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut admin)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut app = sidecar
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    loop {
        let got: redis::RedisResult<Option<String>> = app.get("before").await;
        match got {
            Ok(v) => {
                assert_eq!(v.as_deref(), Some("1"));
                break;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the sidecar did not take the rotated password from the Secret: {e}\n{}",
                    sidecar.log_tail(30)
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(c) = sidecar.client().get_multiplexed_async_connection().await {
                    app = c;
                }
            }
        }
    }
}

#[tokio::test]
async fn the_api_client_checks_the_servers_certificate_for_the_kubeconfigs_tls_server_name() {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let cp = ControlPlane::shared();
    let namespaces = |name: Option<&str>| {
        let name = name.map(str::to_owned);
        async move {
            let kc = Kubeconfig::read_from(&cp.kubeconfig).unwrap();
            let mut config =
                kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .unwrap();
            config.tls_server_name = name;
            let client = redis_fleet::kube_client::client(config).unwrap();
            Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
                .list(&Default::default())
                .await
        }
    };
    // The test API server's certificate names 127.0.0.1 and localhost.
    namespaces(None).await.unwrap();
    namespaces(Some("localhost")).await.unwrap();
    let refused = namespaces(Some("elsewhere.invalid")).await;
    assert!(
        refused.is_err(),
        "a certificate for 127.0.0.1 and localhost was taken for elsewhere.invalid"
    );
}
