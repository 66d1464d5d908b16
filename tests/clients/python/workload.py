"""A small application workload with redis-py, through two redis-fleet sidecars.

    workload.py PORT OTHER_PORT PROTOCOL

PORT is the sidecar this "application pod" uses; OTHER_PORT is another pod's sidecar, which
publishes the Pub/Sub messages this one must receive. PROTOCOL is "default" (redis-py's own
default: RESP3 in redis-py 8) or "2". Prints one line per check and ends with
"N passed, M failed"; exits non-zero when a check failed.
"""

import sys
import threading
import time

import redis

port, other_port, protocol = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
kwargs = {} if protocol == "default" else {"protocol": int(protocol)}
r = redis.Redis(host="127.0.0.1", port=port, decode_responses=True, **kwargs)
other = redis.Redis(host="127.0.0.1", port=other_port, decode_responses=True, **kwargs)

passed, failed = 0, 0


def check(name, got, want):
    global passed, failed
    if got == want:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}: got {got!r}, want {want!r}")


tag = f"py{protocol}"
# Which protocol the connection speaks (HELLO's answer, redis-py's own view).
hello = r.execute_command("HELLO")
if not isinstance(hello, dict):
    hello = dict(zip(hello[::2], hello[1::2]))
check("protocol", int(hello["proto"]), 3 if protocol == "default" else int(protocol))

# Strings, across categories (user: and session: live on different instances).
check("set", r.set(f"user:{tag}:1", "alice"), True)
check("get", r.get(f"user:{tag}:1"), "alice")
check("get missing", r.get(f"user:{tag}:missing"), None)
check("incr", r.incr(f"session:{tag}:counter"), 1)
check("incrbyfloat", r.incrbyfloat(f"session:{tag}:float", 1.5), 1.5)
check("mset", r.mset({f"user:{tag}:2": "bob", f"session:{tag}:2": "s2"}), True)
check("mget across instances",
      r.mget(f"user:{tag}:1", f"session:{tag}:2", f"user:{tag}:nope"), ["alice", "s2", None])
check("expire/ttl", (r.expire(f"user:{tag}:1", 100), 0 < r.ttl(f"user:{tag}:1") <= 100), (True, True))

# Hashes.
check("hset", r.hset(f"user:{tag}:h", mapping={"name": "alice", "age": "30"}), 2)
check("hgetall", r.hgetall(f"user:{tag}:h"), {"name": "alice", "age": "30"})
check("hget", r.hget(f"user:{tag}:h", "name"), "alice")
check("hincrby", r.hincrby(f"user:{tag}:h", "age", 1), 31)

# Lists, sets, sorted sets.
check("rpush", r.rpush(f"user:{tag}:l", "a", "b", "c"), 3)
check("lrange", r.lrange(f"user:{tag}:l", 0, -1), ["a", "b", "c"])
check("lpop", r.lpop(f"user:{tag}:l"), "a")
check("sadd", r.sadd(f"user:{tag}:s", "x", "y"), 2)
check("smembers", r.smembers(f"user:{tag}:s"), {"x", "y"})
check("zadd", r.zadd(f"user:{tag}:z", {"a": 1, "b": 2.5}), 2)
check("zscore", r.zscore(f"user:{tag}:z", "b"), 2.5)
check("zrange withscores", [tuple(p) for p in r.zrange(f"user:{tag}:z", 0, -1, withscores=True)],
      [("a", 1.0), ("b", 2.5)])

# A pipeline across instances.
pipe = r.pipeline(transaction=False)
pipe.set(f"user:{tag}:p", "1").get(f"user:{tag}:p").incr(f"session:{tag}:p").get(f"session:{tag}:p")
check("pipeline", pipe.execute(), [True, "1", 1, "1"])

# A transaction on one instance (one hash tag), with WATCH.
key = f"{{order-{tag}}}:total"
with r.pipeline() as tx:
    tx.watch(key)
    current = int(tx.get(key) or 0)
    tx.multi()
    tx.set(key, current + 10)
    tx.get(key)
    check("transaction", tx.execute(), [True, "10"])

# A script on one instance.
check("eval", r.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, f"{{order-{tag}}}:n", 5), 5)

# SCAN sees what was written (and only application keys).
seen = set(r.scan_iter(match=f"user:{tag}:*", count=10))
check("scan", {f"user:{tag}:1", f"user:{tag}:2", f"user:{tag}:h", f"user:{tag}:l",
               f"user:{tag}:s", f"user:{tag}:z", f"user:{tag}:p"} <= seen, True)

# Pub/Sub: this pod subscribes, the other pod publishes.
pubsub = r.pubsub()
channel = f"notifications:{tag}"
pubsub.subscribe(channel)
first = pubsub.get_message(timeout=5)
check("subscribe confirmation", first and first["type"], "subscribe")
received = []


def listen():
    deadline = time.time() + 10
    while time.time() < deadline and len(received) < 3:
        m = pubsub.get_message(timeout=1)
        if m and m["type"] == "message":
            received.append(m["data"])


t = threading.Thread(target=listen)
t.start()
for i in range(3):
    other.publish(channel, f"event-{i}")
t.join()
check("pubsub across sidecars", received, ["event-0", "event-1", "event-2"])
pubsub.close()

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
