// A small application workload with go-redis v9 (its defaults: RESP3), through two
// redis-fleet sidecars: go run . PORT OTHER_PORT. Prints one line per check and ends with
// "N passed, M failed"; exits non-zero when a check failed.
package main

import (
	"context"
	"fmt"
	"os"
	"reflect"
	"time"

	"github.com/redis/go-redis/v9"
)

var passed, failed int

func check(name string, got, want any) {
	if reflect.DeepEqual(got, want) {
		passed++
		fmt.Println("ok  ", name)
	} else {
		failed++
		fmt.Printf("FAIL %s: got %#v, want %#v\n", name, got, want)
	}
}

func main() {
	ctx := context.Background()
	r := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + os.Args[1]})
	other := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + os.Args[2]})
	defer r.Close()
	defer other.Close()

	hello, err := r.Do(ctx, "HELLO").Result()
	proto := int64(0)
	if m, ok := hello.(map[interface{}]interface{}); ok {
		proto, _ = m["proto"].(int64)
	}
	check("protocol", fmt.Sprint(proto, err), "3 <nil>")

	check("set", r.Set(ctx, "user:go:1", "alice", 0).Val(), "OK")
	check("get", r.Get(ctx, "user:go:1").Val(), "alice")
	check("get missing", r.Get(ctx, "user:go:missing").Err(), redis.Nil)
	check("incr", r.Incr(ctx, "session:go:counter").Val(), int64(1))
	check("mset", r.MSet(ctx, "user:go:2", "bob", "session:go:2", "s2").Val(), "OK")
	check("mget across instances", r.MGet(ctx, "user:go:1", "session:go:2", "user:go:nope").Val(),
		[]interface{}{"alice", "s2", nil})
	check("hset", r.HSet(ctx, "user:go:h", "name", "alice", "age", "30").Val(), int64(2))
	check("hgetall", r.HGetAll(ctx, "user:go:h").Val(), map[string]string{"name": "alice", "age": "30"})
	check("rpush", r.RPush(ctx, "user:go:l", "a", "b", "c").Val(), int64(3))
	check("lrange", r.LRange(ctx, "user:go:l", 0, -1).Val(), []string{"a", "b", "c"})
	check("sadd", r.SAdd(ctx, "user:go:s", "x").Val(), int64(1))
	check("smembers", r.SMembers(ctx, "user:go:s").Val(), []string{"x"})
	check("zadd", r.ZAdd(ctx, "user:go:z", redis.Z{Score: 2.5, Member: "b"}).Val(), int64(1))
	check("zscore", r.ZScore(ctx, "user:go:z", "b").Val(), 2.5)
	check("zrange withscores", r.ZRangeWithScores(ctx, "user:go:z", 0, -1).Val(),
		[]redis.Z{{Score: 2.5, Member: "b"}})

	cmds, err := r.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, "user:go:p", "1", 0)
		p.Incr(ctx, "session:go:p")
		return nil
	})
	check("pipeline", fmt.Sprint(len(cmds), err), "2 <nil>")

	key := "{order-go}:total"
	err = r.Watch(ctx, func(tx *redis.Tx) error {
		n, _ := tx.Get(ctx, key).Int()
		_, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, key, n+10, 0)
			return nil
		})
		return err
	}, key)
	check("transaction", fmt.Sprintf("%v %v", err, r.Get(ctx, key).Val()), "<nil> 10")
	check("eval", r.Eval(ctx, "return redis.call('INCRBY', KEYS[1], ARGV[1])", []string{"{order-go}:n"}, 5).Val(), int64(5))

	keys, _, _ := r.Scan(ctx, 0, "user:go:*", 1000).Result()
	for cursor := uint64(1); cursor != 0; {
		var page []string
		page, cursor, err = r.Scan(ctx, cursor, "user:go:*", 1000).Result()
		keys = append(keys, page...)
		if err != nil {
			break
		}
	}
	check("scan", len(keys) >= 6, true)

	sub := r.Subscribe(ctx, "notifications:go")
	_, err = sub.Receive(ctx)
	check("subscribe", err, nil)
	ch := sub.Channel()
	var got []string
	for i := 0; i < 3; i++ {
		other.Publish(ctx, "notifications:go", fmt.Sprintf("event-%d", i))
	}
	deadline := time.After(10 * time.Second)
wait:
	for len(got) < 3 {
		select {
		case m := <-ch:
			got = append(got, m.Payload)
		case <-deadline:
			break wait
		}
	}
	check("pubsub across sidecars", got, []string{"event-0", "event-1", "event-2"})
	sub.Close()

	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}
