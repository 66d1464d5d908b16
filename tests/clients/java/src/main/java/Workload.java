// A small application workload with Jedis, through two redis-fleet sidecars.
//
//     java Workload PORT OTHER_PORT PROTOCOL
//
// PORT is the sidecar this "application pod" uses; OTHER_PORT is another pod's sidecar, which
// publishes the Pub/Sub messages this one must receive. PROTOCOL is "2" (Jedis' default) or
// "3". Prints one line per check and ends with "N passed, M failed"; exits non-zero when a
// check failed.

import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import redis.clients.jedis.DefaultJedisClientConfig;
import redis.clients.jedis.HostAndPort;
import redis.clients.jedis.Jedis;
import redis.clients.jedis.JedisPubSub;
import redis.clients.jedis.Pipeline;
import redis.clients.jedis.RedisProtocol;
import redis.clients.jedis.Response;
import redis.clients.jedis.Transaction;
import redis.clients.jedis.params.ScanParams;
import redis.clients.jedis.resps.ScanResult;
import redis.clients.jedis.resps.Tuple;

public class Workload {
    static int passed = 0;
    static int failed = 0;

    static void check(String name, Object got, Object want) {
        if (Objects.equals(got, want)) {
            passed++;
            System.out.println("ok   " + name);
        } else {
            failed++;
            System.out.println("FAIL " + name + ": got " + got + ", want " + want);
        }
    }

    static Jedis connect(int port, RedisProtocol protocol) {
        return new Jedis(new HostAndPort("127.0.0.1", port),
                DefaultJedisClientConfig.builder().protocol(protocol).socketTimeoutMillis(10_000).build());
    }

    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        int otherPort = Integer.parseInt(args[1]);
        RedisProtocol protocol = args[2].equals("3") ? RedisProtocol.RESP3 : RedisProtocol.RESP2;
        String tag = "jedis" + args[2];
        try (Jedis r = connect(port, protocol); Jedis other = connect(otherPort, protocol)) {
            // Strings, across categories (user: and session: live on different instances).
            check("set", r.set("user:" + tag + ":1", "alice"), "OK");
            check("get", r.get("user:" + tag + ":1"), "alice");
            check("get missing", r.get("user:" + tag + ":missing"), null);
            check("incr", r.incr("session:" + tag + ":counter"), 1L);
            check("mset", r.mset("user:" + tag + ":2", "bob", "session:" + tag + ":2", "s2"), "OK");
            check("mget across instances",
                    r.mget("user:" + tag + ":1", "session:" + tag + ":2", "user:" + tag + ":nope"),
                    java.util.Arrays.asList("alice", "s2", null));
            check("expire/ttl", r.expire("user:" + tag + ":1", 100) == 1 && r.ttl("user:" + tag + ":1") > 0, true);

            // Hashes, lists, sorted sets.
            check("hset", r.hset("user:" + tag + ":h", Map.of("name", "alice", "age", "30")), 2L);
            check("hgetAll", r.hgetAll("user:" + tag + ":h"), Map.of("name", "alice", "age", "30"));
            check("hincrBy", r.hincrBy("user:" + tag + ":h", "age", 1), 31L);
            check("rpush", r.rpush("user:" + tag + ":l", "a", "b", "c"), 3L);
            check("lrange", r.lrange("user:" + tag + ":l", 0, -1), List.of("a", "b", "c"));
            check("zadd", r.zadd("user:" + tag + ":z", Map.of("a", 1.0, "b", 2.5)), 2L);
            check("zscore", r.zscore("user:" + tag + ":z", "b"), 2.5);
            List<String> withScores = new ArrayList<>();
            for (Tuple t : r.zrangeWithScores("user:" + tag + ":z", 0, -1)) {
                withScores.add(t.getElement() + "=" + t.getScore());
            }
            check("zrangeWithScores", withScores, List.of("a=1.0", "b=2.5"));

            // A pipeline across instances.
            Pipeline p = r.pipelined();
            Response<String> set = p.set("user:" + tag + ":p", "1");
            Response<String> get = p.get("user:" + tag + ":p");
            Response<Long> incr = p.incr("session:" + tag + ":p");
            p.sync();
            check("pipeline", List.of(set.get(), get.get(), incr.get()), List.of("OK", "1", 1L));

            // A transaction on one instance (one hash tag), with WATCH.
            String key = "{order-" + tag + "}:total";
            r.watch(key);
            Transaction tx = r.multi();
            tx.set(key, "10");
            tx.incrBy(key, 5);
            check("multi/exec", tx.exec(), List.of("OK", 15L));

            // A script on one instance.
            check("eval", r.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", List.of("{order-" + tag + "}:n"),
                    List.of("5")), 5L);

            // SCAN sees what was written.
            Set<String> seen = new HashSet<>();
            String cursor = ScanParams.SCAN_POINTER_START;
            ScanParams params = new ScanParams().match("user:" + tag + ":*").count(10);
            do {
                ScanResult<String> page = r.scan(cursor, params);
                seen.addAll(page.getResult());
                cursor = page.getCursor();
            } while (!cursor.equals(ScanParams.SCAN_POINTER_START));
            check("scan", seen.containsAll(List.of("user:" + tag + ":1", "user:" + tag + ":2", "user:" + tag + ":h",
                    "user:" + tag + ":l", "user:" + tag + ":z", "user:" + tag + ":p")), true);

            // Pub/Sub: this pod subscribes, the other pod publishes.
            String channel = "notifications:" + tag;
            List<String> received = new ArrayList<>();
            CountDownLatch subscribed = new CountDownLatch(1);
            CountDownLatch all = new CountDownLatch(3);
            JedisPubSub listener = new JedisPubSub() {
                @Override
                public void onSubscribe(String ch, int count) {
                    subscribed.countDown();
                }

                @Override
                public void onMessage(String ch, String message) {
                    synchronized (received) {
                        received.add(message);
                    }
                    all.countDown();
                }
            };
            Thread t = new Thread(() -> {
                try (Jedis sub = connect(port, protocol)) {
                    sub.subscribe(listener, channel);
                }
            });
            t.start();
            check("subscribe confirmation", subscribed.await(5, TimeUnit.SECONDS), true);
            for (int i = 0; i < 3; i++) {
                other.publish(channel, "event-" + i);
            }
            all.await(10, TimeUnit.SECONDS);
            synchronized (received) {
                check("pubsub across sidecars", received, List.of("event-0", "event-1", "event-2"));
            }
            listener.unsubscribe();
            t.join(5_000);
        } catch (Exception e) {
            failed++;
            System.out.println("FAIL " + e);
            e.printStackTrace(System.out);
        }
        System.out.println(passed + " passed, " + failed + " failed");
        System.exit(failed > 0 ? 1 : 0);
    }
}
