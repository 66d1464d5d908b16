//! The API server's own count of requests (`apiserver_request_total` at /metrics, read with
//! the admin token): writes are APPLY (server-side apply, the operator's status writes), PATCH,
//! PUT, POST and DELETE.

use std::collections::BTreeMap;

use kube::Client;

/// Requests served so far, by `VERB resource[/subresource]`.
pub async fn requests(client: &Client) -> BTreeMap<String, f64> {
    let req = hyper::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let mut key = format!("{} {}", label("verb"), label("resource"));
        let sub = label("subresource");
        if !sub.is_empty() {
            key = format!("{key}/{sub}");
        }
        *out.entry(key).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    out
}

/// Whether `key` (from [`requests`]) counts a write.
pub fn is_write(key: &str) -> bool {
    ["APPLY ", "PATCH ", "PUT ", "POST ", "DELETE "]
        .iter()
        .any(|v| key.starts_with(v))
}

/// `after - before` of the writes, by key, without zeros.
pub fn writes_between(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter(|(k, _)| is_write(k))
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect()
}

/// `after - before` of the reads (GET, LIST, WATCH), summed.
pub fn reads_between(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> f64 {
    after
        .iter()
        .filter(|(k, _)| !is_write(k))
        .map(|(k, v)| v - before.get(k).copied().unwrap_or(0.0))
        .sum()
}
