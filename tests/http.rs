//! The metrics endpoint of the operator and the sidecar under clients that never finish a
//! request: a thousand idle half-open connections neither keep `/metrics` from answering nor
//! stay open.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use redis_fleet::http::{self, HEADER_TIMEOUT, Probes};

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_half_open_connections_neither_block_metrics_nor_stay() {
    let probes = Probes::new(Registry::default());
    probes.set_ready(true);
    let (addr, _task) = http::serve("127.0.0.1:0".parse().unwrap(), probes)
        .await
        .unwrap();
    let idle: Vec<TcpStream> = tokio::task::spawn_blocking(move || {
        (0..1000)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                // The start of a request, and then nothing: a slow-loris client.
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
                s
            })
            .collect()
    })
    .await
    .unwrap();
    let answered = tokio::task::spawn_blocking(move || get(addr, "/readyz"))
        .await
        .unwrap();
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    // After the header timeout the server has closed every one of them.
    tokio::time::sleep(HEADER_TIMEOUT + Duration::from_secs(2)).await;
    let still_open = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        idle.into_iter()
            .filter(|s| {
                let mut s = s;
                s.set_read_timeout(Some(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1)),
                ))
                .unwrap();
                let mut buf = [0u8; 512];
                loop {
                    match s.read(&mut buf) {
                        // Closed (possibly after a 408 response).
                        Ok(0) => return false,
                        Ok(_) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                            return false;
                        }
                        Err(_) => return true,
                    }
                }
            })
            .count()
    })
    .await
    .unwrap();
    assert_eq!(still_open, 0, "idle connections the server kept open");
    let metrics = tokio::task::spawn_blocking(move || get(addr, "/metrics"))
        .await
        .unwrap();
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
}

/// Text logs written to a pipe — what `kubectl logs` and collectors read — carry no terminal
/// colour codes, without `NO_COLOR` in the environment (they did: every rebalance Job's and
/// every text-format operator's log was full of escape sequences).
#[test]
fn text_logs_to_a_pipe_are_plain() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_redis-fleet"))
        .args([
            "sidecar",
            "--routing-file",
            "/nonexistent/routing.json",
            "--listen",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--id",
            "plain-logs",
        ])
        .env_remove("NO_COLOR")
        .env_remove("REDIS_FLEET_LOG_FORMAT")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    // The warning about the missing table names the field `error=`: a key-value pair, which
    // the coloured format wraps in escapes too.
    while let Some(Ok(line)) = lines.next() {
        let done = line.contains("keeping the previous routing table");
        seen.push(line);
        if done || seen.len() > 50 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = seen.join("\n");
    assert!(
        text.contains("keeping the previous routing table") && text.contains("error="),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "escape codes in a piped log:\n{text}"
    );
}
