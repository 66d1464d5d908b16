"""redis-py's own client-side cache through a redis-fleet sidecar.

    caching.py PORT OTHER_PORT

PORT is the sidecar this "application pod" uses, with redis-py's cache on (RESP3,
CLIENT TRACKING); OTHER_PORT is another pod's sidecar, through which the keys are written.
Prints one line per check and ends with "N passed, M failed"; exits non-zero when a check
failed.
"""

import sys
import time

import redis
from redis.cache import CacheConfig

port, other_port = int(sys.argv[1]), int(sys.argv[2])
r = redis.Redis(host="127.0.0.1", port=port, protocol=3, cache_config=CacheConfig(),
                decode_responses=True)
other = redis.Redis(host="127.0.0.1", port=other_port, decode_responses=True)

passed, failed = 0, 0


def check(name, got, want):
    global passed, failed
    if got == want:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}: got {got!r}, want {want!r}")


def settles(read, want):
    """The value a read gives once the invalidation arrived (it is asynchronous, as with
    Redis itself): at most a couple of seconds."""
    deadline = time.monotonic() + 3
    got = read()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.05)
        got = read()
    return got


cache = r.get_cache()
# Keys on both instances (user: and session: live on different ones in the test fleet, and
# {a} / {h} hash to either half of the slots).
keys = ["csc:{a}1", "csc:{h}2"]
for i, k in enumerate(keys):
    other.set(k, f"v{i}")
for i, k in enumerate(keys):
    check(f"first read {k}", r.get(k), f"v{i}")
check("cached", cache.size, len(keys))
for i, k in enumerate(keys):
    check(f"cached read {k}", r.get(k), f"v{i}")

# Writes through the other sidecar: the next reads return the new values.
for i, k in enumerate(keys):
    other.set(k, f"new{i}")
for i, k in enumerate(keys):
    check(f"read after a write elsewhere {k}", settles(lambda: r.get(k), f"new{i}"), f"new{i}")
check("cached again", cache.size, len(keys))

# A hash and a deletion.
other.hset("csc:{a}h", mapping={"f": "1"})
check("hget", r.hget("csc:{a}h", "f"), "1")
other.delete("csc:{a}h")
check("hget after a delete elsewhere", settles(lambda: r.hget("csc:{a}h", "f"), None), None)

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
