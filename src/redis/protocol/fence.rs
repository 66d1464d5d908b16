//! Fences: per policy, on every instance, the lowest table version allowed to use each instance
//! (see `docs/protocol.md`). Raising a fence on an instance also closes the connections that
//! sidecars opened with an older table, so no command routed by an older table runs there
//! afterwards.

use std::collections::BTreeMap;

use redis::aio::ConnectionLike;

use super::names;
use crate::redis::resp::Frame;

/// Instance name → lowest table version allowed to use it.
pub type Fences = BTreeMap<String, u64>;

/// KEYS: fences. ARGV: instance, version, instance, version, … Raises each instance's fence to
/// at least the given version (fences never go down) and returns the whole hash flattened.
pub const RAISE_SCRIPT: &str = concat!(
    oom_exempt!(),
    r"
for i = 1, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > cur then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return redis.call('HGETALL', KEYS[1])
"
);

/// Reads a flattened `HGETALL` of the fences hash.
pub fn parse(frame: &Frame) -> Fences {
    let Frame::Array(items) = frame else {
        return Fences::new();
    };
    items
        .chunks_exact(2)
        .filter_map(|pair| {
            let name = String::from_utf8(pair[0].as_bulk()?.to_vec()).ok()?;
            let version = std::str::from_utf8(pair[1].as_bulk()?).ok()?.parse().ok()?;
            Some((name, version))
        })
        .collect()
}

/// Merges `other` into `into`, keeping the larger fence of each instance.
pub fn merge(into: &mut Fences, other: &Fences) {
    for (name, &v) in other {
        let e = into.entry(name.clone()).or_insert(0);
        *e = (*e).max(v);
    }
}

/// Raises fences of `raise` (instance → version) in `policy`'s hash on one instance and returns
/// the hash.
pub async fn raise(
    conn: &mut (impl ConnectionLike + Send),
    policy: &str,
    raise: &[(String, u64)],
) -> redis::RedisResult<Fences> {
    static RAISE: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(RAISE_SCRIPT));
    let mut call = RAISE.prepare_invoke();
    call.key(names::fences(policy));
    for (name, version) in raise {
        call.arg(name).arg(*version);
    }
    let flat: Vec<(String, String)> = call.invoke_async(conn).await?;
    Ok(flat
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect())
}

/// Reads `policy`'s fences on one instance.
pub async fn read(
    conn: &mut (impl ConnectionLike + Send),
    policy: &str,
) -> redis::RedisResult<Fences> {
    raise(conn, policy, &[]).await
}

/// Closes every connection that a sidecar of `policy` opened with a table older than
/// `min_version` (their names say so); returns how many. Call it after raising the fence on
/// this instance: a connection opened later sees the fence at its handshake.
pub async fn close_older_connections(
    conn: &mut (impl ConnectionLike + Send),
    policy: &str,
    min_version: u64,
) -> redis::RedisResult<usize> {
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(conn).await?;
    let ids = older_connections(&list, policy, min_version);
    for id in &ids {
        // Already gone is fine: the aim is that it no longer runs commands.
        let _: redis::RedisResult<redis::Value> = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(*id)
            .query_async(conn)
            .await;
    }
    Ok(ids.len())
}

/// The ids of `CLIENT LIST` lines whose name is a connection of `policy` older than
/// `min_version`.
pub fn older_connections(client_list: &str, policy: &str, min_version: u64) -> Vec<u64> {
    client_list
        .lines()
        .filter_map(|line| {
            let mut id = None;
            let mut name = None;
            for field in line.split(' ') {
                if let Some(v) = field.strip_prefix("id=") {
                    id = v.parse::<u64>().ok();
                } else if let Some(v) = field.strip_prefix("name=") {
                    name = Some(v);
                }
            }
            let (p, version) = names::parse_connection_name(name?)?;
            (p == policy && version < min_version).then_some(id?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn older_connections_of_the_policy_only() {
        let list = "id=3 addr=127.0.0.1:5 laddr=x fd=8 name=redisfleet:shop/shop:a:v16 age=1\n\
                    id=4 addr=127.0.0.1:6 laddr=x fd=9 name=redisfleet:shop/shop:b:v17 age=1\n\
                    id=5 addr=127.0.0.1:7 laddr=x fd=9 name=redisfleet:other/p:c:v2 age=1\n\
                    id=6 addr=127.0.0.1:8 laddr=x fd=9 name= age=1\n";
        assert_eq!(older_connections(list, "shop/shop", 17), vec![3]);
        assert_eq!(older_connections(list, "shop/shop", 18), vec![3, 4]);
        assert_eq!(older_connections(list, "other/p", 3), vec![5]);
    }

    #[test]
    fn parse_and_merge() {
        let b = |s: &str| Frame::Bulk(Bytes::from(s.to_owned()));
        let f = parse(&Frame::Array(vec![
            b("primary"),
            b("12"),
            b("secondary"),
            b("3"),
        ]));
        assert_eq!(f.get("primary"), Some(&12));
        let mut into: Fences = [("primary".to_owned(), 20)].into();
        merge(&mut into, &f);
        assert_eq!(into.get("primary"), Some(&20));
        assert_eq!(into.get("secondary"), Some(&3));
    }
}
