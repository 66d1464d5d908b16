// A small application workload with Node clients, through two redis-fleet sidecars.
//
//     node workload.mjs CLIENT PORT OTHER_PORT
//
// CLIENT is "ioredis", "node-redis" (RESP2, its default), "node-redis-resp3" or "bullmq" (a
// queue with a producer on this pod and a worker on the other). PORT is the sidecar this
// "application pod" uses; OTHER_PORT is another pod's sidecar. Prints one line per check and
// ends with "N passed, M failed"; exits non-zero when a check failed.

import { isDeepStrictEqual } from "node:util";

const [client, port, otherPort] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
let passed = 0;
let failed = 0;

function check(name, got, want) {
  if (isDeepStrictEqual(got, want)) {
    passed += 1;
    console.log(`ok   ${name}`);
  } else {
    failed += 1;
    console.log(`FAIL ${name}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
}

async function attempt(name, f) {
  try {
    await f();
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits until `cond()` holds or `ms` pass; whether it held. */
async function until(cond, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (cond()) return true;
    await sleep(20);
  }
  return cond();
}

async function withIoredis() {
  const { Redis } = await import("ioredis");
  const r = new Redis({ host: "127.0.0.1", port, maxRetriesPerRequest: 3 });
  const other = new Redis({ host: "127.0.0.1", port: otherPort, maxRetriesPerRequest: 3 });
  const sub = new Redis({ host: "127.0.0.1", port, maxRetriesPerRequest: 3 });
  const tag = "io";
  await attempt("ioredis strings", async () => {
    check("set", await r.set(`user:${tag}:1`, "alice"), "OK");
    check("get", await r.get(`user:${tag}:1`), "alice");
    check("get missing", await r.get(`user:${tag}:missing`), null);
    check("incr", await r.incr(`session:${tag}:counter`), 1);
    check("mset", await r.mset(`user:${tag}:2`, "bob", `session:${tag}:2`, "s2"), "OK");
    check(
      "mget across instances",
      await r.mget(`user:${tag}:1`, `session:${tag}:2`, `user:${tag}:nope`),
      ["alice", "s2", null],
    );
    check("set EX + ttl", [await r.set(`user:${tag}:t`, "v", "EX", 100), (await r.ttl(`user:${tag}:t`)) > 0], ["OK", true]);
  });
  await attempt("ioredis hashes and lists", async () => {
    check("hset", await r.hset(`user:${tag}:h`, { name: "alice", age: "30" }), 2);
    check("hgetall", await r.hgetall(`user:${tag}:h`), { name: "alice", age: "30" });
    check("hincrby", await r.hincrby(`user:${tag}:h`, "age", 1), 31);
    check("rpush", await r.rpush(`user:${tag}:l`, "a", "b", "c"), 3);
    check("lrange", await r.lrange(`user:${tag}:l`, 0, -1), ["a", "b", "c"]);
    check("zadd", await r.zadd(`user:${tag}:z`, 1, "a", 2.5, "b"), 2);
    check("zrange withscores", await r.zrange(`user:${tag}:z`, 0, -1, "WITHSCORES"), ["a", "1", "b", "2.5"]);
  });
  await attempt("ioredis pipeline", async () => {
    const res = await r
      .pipeline()
      .set(`user:${tag}:p`, "1")
      .get(`user:${tag}:p`)
      .incr(`session:${tag}:p`)
      .get(`session:${tag}:p`)
      .exec();
    check("pipeline", res, [[null, "OK"], [null, "1"], [null, 1], [null, "1"]]);
  });
  await attempt("ioredis transaction", async () => {
    const key = `{order-${tag}}:total`;
    await r.watch(key);
    const res = await r.multi().set(key, "10").incrby(key, 5).exec();
    check("multi/exec", res, [[null, "OK"], [null, 15]]);
  });
  await attempt("ioredis script", async () => {
    r.defineCommand("addTo", { numberOfKeys: 1, lua: "return redis.call('INCRBY', KEYS[1], ARGV[1])" });
    check("evalsha (defineCommand)", await r.addTo(`{order-${tag}}:n`, 5), 5);
    check("evalsha again", await r.addTo(`{order-${tag}}:n`, 5), 10);
  });
  await attempt("ioredis scan", async () => {
    const seen = new Set();
    await new Promise((resolve, reject) => {
      const stream = r.scanStream({ match: `user:${tag}:*`, count: 10 });
      stream.on("data", (keys) => keys.forEach((k) => seen.add(k)));
      stream.on("end", resolve);
      stream.on("error", reject);
    });
    const want = ["1", "2", "h", "l", "z", "p", "t"].map((s) => `user:${tag}:${s}`);
    check("scanStream", want.every((k) => seen.has(k)), true);
  });
  await attempt("ioredis pub/sub", async () => {
    const channel = `notifications:${tag}`;
    const received = [];
    sub.on("message", (ch, msg) => {
      if (ch === channel) received.push(msg);
    });
    check("subscribe", await sub.subscribe(channel), 1);
    for (let i = 0; i < 3; i++) await other.publish(channel, `event-${i}`);
    await until(() => received.length >= 3, 10_000);
    check("pubsub across sidecars", received, ["event-0", "event-1", "event-2"]);
  });
  sub.disconnect();
  r.disconnect();
  other.disconnect();
}

async function withNodeRedis(resp) {
  const { createClient } = await import("redis");
  const options = (p) => ({ socket: { host: "127.0.0.1", port: p, reconnectStrategy: false }, ...(resp === 3 ? { RESP: 3 } : {}) });
  const r = createClient(options(port));
  const other = createClient(options(otherPort));
  for (const c of [r, other]) c.on("error", (e) => console.log(`client error: ${e}`));
  await r.connect();
  await other.connect();
  const tag = resp === 3 ? "nr3" : "nr2";
  await attempt("node-redis strings", async () => {
    check("set", await r.set(`user:${tag}:1`, "alice"), "OK");
    check("get", await r.get(`user:${tag}:1`), "alice");
    check("incr", await r.incr(`session:${tag}:counter`), 1);
    check("mGet across instances", await r.mGet([`user:${tag}:1`, `session:${tag}:counter`, `user:${tag}:nope`]), ["alice", "1", null]);
    check("set EX", await r.set(`user:${tag}:t`, "v", { EX: 100 }), "OK");
    check("ttl", (await r.ttl(`user:${tag}:t`)) > 0, true);
  });
  await attempt("node-redis hashes and sorted sets", async () => {
    check("hSet", await r.hSet(`user:${tag}:h`, { name: "alice", age: "30" }), 2);
    const all = await r.hGetAll(`user:${tag}:h`);
    check("hGetAll", { ...all }, { name: "alice", age: "30" });
    check("zAdd", await r.zAdd(`user:${tag}:z`, [{ score: 1, value: "a" }, { score: 2.5, value: "b" }]), 2);
    check("zRangeWithScores", await r.zRangeWithScores(`user:${tag}:z`, 0, -1), [
      { value: "a", score: 1 },
      { value: "b", score: 2.5 },
    ]);
  });
  await attempt("node-redis pipeline and transaction", async () => {
    const piped = await Promise.all([
      r.set(`user:${tag}:p`, "1"),
      r.get(`user:${tag}:p`),
      r.incr(`session:${tag}:p`),
    ]);
    check("auto-pipelined commands", piped, ["OK", "1", 1]);
    const key = `{order-${tag}}:total`;
    const res = await r.multi().set(key, "10").incrBy(key, 5).exec();
    check("multi/exec", res, ["OK", 15]);
  });
  await attempt("node-redis script", async () => {
    const res = await r.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", {
      keys: [`{order-${tag}}:n`],
      arguments: ["5"],
    });
    check("eval", res, 5);
  });
  await attempt("node-redis scan", async () => {
    const seen = new Set();
    for await (const keys of r.scanIterator({ MATCH: `user:${tag}:*`, COUNT: 10 })) {
      for (const k of [].concat(keys)) seen.add(k);
    }
    const want = ["1", "h", "z", "p", "t"].map((s) => `user:${tag}:${s}`);
    check("scanIterator", want.every((k) => seen.has(k)), true);
  });
  await attempt("node-redis pub/sub", async () => {
    const sub = r.duplicate();
    sub.on("error", (e) => console.log(`subscriber error: ${e}`));
    await sub.connect();
    const channel = `notifications:${tag}`;
    const received = [];
    await sub.subscribe(channel, (msg) => received.push(msg));
    for (let i = 0; i < 3; i++) await other.publish(channel, `event-${i}`);
    await until(() => received.length >= 3, 10_000);
    check("pubsub across sidecars", received, ["event-0", "event-1", "event-2"]);
    await sub.unsubscribe(channel);
    sub.destroy();
  });
  r.destroy();
  other.destroy();
}

async function withBullmq() {
  const { Queue, Worker, QueueEvents } = await import("bullmq");
  // Every key of a queue under one hash tag, as for Redis Cluster: BullMQ's scripts touch
  // several of them at once, so they must live on one instance.
  const prefix = "{bull}";
  const name = "mail";
  const conn = (p) => ({ host: "127.0.0.1", port: p, maxRetriesPerRequest: null });
  const queue = new Queue(name, { connection: conn(port), prefix });
  const events = new QueueEvents(name, { connection: conn(port), prefix });
  const done = [];
  const worker = new Worker(
    name,
    async (job) => {
      if (job.data.fail && job.attemptsMade === 0) throw new Error("first attempt fails");
      return { sent: job.data.to, attempt: job.attemptsMade };
    },
    { connection: conn(otherPort), prefix, concurrency: 4 },
  );
  worker.on("completed", (job, result) => done.push([job.id, result.sent]));
  worker.on("error", (e) => console.log(`worker error: ${e}`));
  await attempt("bullmq", async () => {
    await worker.waitUntilReady();
    await events.waitUntilReady();
    const jobs = await queue.addBulk(
      Array.from({ length: 20 }, (_, i) => ({
        name: "send",
        data: { to: `user-${i}@example.com`, fail: i % 5 === 0 },
        opts: { attempts: 2, backoff: { type: "fixed", delay: 50 } },
      })),
    );
    check("jobs added", jobs.length, 20);
    const delayed = await queue.add("send", { to: "later@example.com" }, { delay: 300 });
    await until(() => done.length >= 21, 30_000);
    check("every job completed once (retries included)", done.length, 21);
    check(
      "results",
      new Set(done.map(([, to]) => to)).size,
      21,
    );
    const job = await queue.getJob(delayed.id);
    check("delayed job state", await job.getState(), "completed");
    const counts = await queue.getJobCounts("completed", "failed", "waiting", "active", "delayed");
    check("counts", counts, { completed: 21, failed: 0, waiting: 0, active: 0, delayed: 0 });
  });
  await worker.close();
  await events.close();
  // KEEP_QUEUE=1: the test compares the queue's keys on its instance and on their replica,
  // with jobs for later among them (their hashes written only by the script that added them,
  // under keys it built itself).
  if (process.env.KEEP_QUEUE === "1") {
    await attempt("bullmq jobs for later", async () => {
      const later = await queue.addBulk(
        Array.from({ length: 5 }, (_, i) => ({
          name: "send",
          data: { to: `tomorrow-${i}@example.com` },
          opts: { delay: 86_400_000 },
        })),
      );
      check("jobs for later", (await queue.getJobCounts("delayed")).delayed, later.length);
    });
  } else {
    await queue.obliterate({ force: true }).catch((e) => console.log(`obliterate: ${e}`));
  }
  await queue.close();
}

const timer = setTimeout(() => {
  console.log(`FAIL ${client}: the workload did not finish in 90 s`);
  console.log(`${passed} passed, ${failed + 1} failed`);
  process.exit(1);
}, 90_000);

if (client === "ioredis") await withIoredis();
else if (client === "node-redis") await withNodeRedis(2);
else if (client === "node-redis-resp3") await withNodeRedis(3);
else if (client === "bullmq") await withBullmq();
else {
  console.log(`unknown client ${client}`);
  process.exit(2);
}
clearTimeout(timer);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
