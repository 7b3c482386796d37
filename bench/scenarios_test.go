package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/bench/internal/brokerclean"
	"github.com/heraldhq/herald/internal/testenv"
	"github.com/heraldhq/herald/redisbroker"
)

const testJWTSecret = "bench-test-secret-0123456789abcdef-0123"

// jsonTypes counts the JSON lines of a run by type, failing on a line that
// is not JSON.
func jsonTypes(t *testing.T, js *bytes.Buffer) map[string]int {
	t.Helper()
	types := map[string]int{}
	for line := range strings.SplitSeq(strings.TrimSpace(js.String()), "\n") {
		var rec struct{ Type string }
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("bad JSON line %q: %v", line, err)
		}
		types[rec.Type]++
	}
	return types
}

// Churn against Herald with tokens, plain and over TLS: every cycle due
// connects with its JWT, subscribes and closes; with the wrong secret every
// cycle is refused and the step fails.
func TestChurnAgainstHerald(t *testing.T) {
	ver, err := herald.NewJWTVerifier(context.Background(), herald.JWTConfig{HMACSecret: []byte(testJWTSecret)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tlsOn := range []bool{false, true} {
		name := map[bool]string{false: "ws", true: "wss"}[tlsOn]
		t.Run(name, func(t *testing.T) {
			url, ca := serveNode(t, herald.Config{Tokens: ver}, tlsOn)
			var js bytes.Buffer
			res, err := Run(context.Background(), Config{
				URL: url, CAFile: ca, Churn: true, JWTSecret: testJWTSecret, Channels: 10, Label: "churn",
				Rates: []Rate{{PerSecond: 20}, {PerSecond: 40}}, StepDuration: time.Second, OnTime: 5 * time.Second, JSON: &js,
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Steps) != 2 {
				t.Fatalf("%d steps", len(res.Steps))
			}
			for _, s := range res.Steps {
				if s.Cycles != s.Target || s.CyclesFailed != 0 || s.CycleError != "" || s.Target != int64(s.TargetRate) || s.Latency.Count != s.Cycles {
					t.Errorf("step %d: %+v", s.Step, s)
				}
			}
			if !res.Plan.Churn || res.Plan.TLS != tlsOn || !res.Plan.JWT {
				t.Errorf("plan: %+v", res.Plan)
			}
			if types := jsonTypes(t, &js); types["plan"] != 1 || types["step"] != 2 || types["summary"] != 1 || types["connect"] != 0 {
				t.Errorf("JSON lines: %v", types)
			}

			bad, err := Run(context.Background(), Config{
				URL: url, CAFile: ca, Churn: true, JWTSecret: testJWTSecret + "-wrong", Channels: 10,
				Rates: []Rate{{PerSecond: 10}}, StepDuration: time.Second, OnTime: 5 * time.Second,
			})
			if err != nil {
				t.Fatal(err)
			}
			if s := bad.Steps[0]; s.Pass || s.Cycles != 0 || s.CyclesFailed != s.Target || s.CycleError == "" || bad.Summary.BestStep != -1 {
				t.Errorf("wrong secret: %+v", s)
			}
		})
	}
}

// Many rooms, small: 300 channels of 2 subscribers, 4 publishers, chat-like
// traffic at a trivial rate: nothing lost, and the CPU per publication is
// reported.
func TestRoomsAgainstHerald(t *testing.T) {
	url := startHerald(t)
	res, err := Run(context.Background(), Config{
		URL: url, Channels: 300, Subscribers: 2, Publishers: 4, Label: "rooms",
		Rates: []Rate{{PerSecond: 100}, {PerSecond: 200}}, StepDuration: time.Second, Drain: 2 * time.Second, OnTime: 5 * time.Second,
		MetricsURL: strings.Replace(strings.Replace(url, "ws://", "http://", 1), "/ws", "/metrics", 1),
	})
	checkClean(t, res, err, 2)
	for _, s := range res.Steps {
		if s.Expected != 2*s.Published || s.CPUPerMillionPub <= 0 || s.CPUPerMillion <= 0 {
			t.Errorf("step %d: expected %d for %d publications, CPU/M publications %.2f, deliveries %.2f", s.Step, s.Expected, s.Published, s.CPUPerMillionPub, s.CPUPerMillion)
		}
	}
}

// History through the broker: two in-process nodes on the real Redis, the
// chat namespace keeping history, subscribers on both nodes and the
// publishers on the first: nothing lost, and the history is in the broker.
func TestHistoryThroughBroker(t *testing.T) {
	rurl := testenv.RedisURL(t)
	rnd := make([]byte, 4)
	_, _ = rand.Read(rnd)
	prefix := "hbt_" + hex.EncodeToString(rnd) + "_hist"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := brokerclean.Redis(ctx, rurl, prefix); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	var urls [2]string
	for i := range urls {
		b, err := redisbroker.New(redisbroker.Options{URL: rurl, Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		urls[i] = startNode(t, herald.Config{Broker: b, Namespaces: []herald.Namespace{{Name: "chat", HistorySize: 100, HistoryTTL: time.Minute}}})
	}
	res, err := Run(context.Background(), Config{
		URL: urls[0] + "," + urls[1], PubURL: urls[0], ChannelPrefix: "chat:", Channels: 4, Subscribers: 6, Publishers: 2, Label: "history",
		Rates: []Rate{{PerSecond: 50}, {PerSecond: 100}}, StepDuration: time.Second, Drain: 3 * time.Second, OnTime: 5 * time.Second,
	})
	checkClean(t, res, err, 2)
	if res.Plan.Nodes != 2 {
		t.Errorf("plan: %d nodes", res.Plan.Nodes)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// brokerclean.Redis deletes and counts: run it now, after the run, to
	// see that the history was kept in Redis (the cleanup finds nothing).
	if n, err := brokerclean.Redis(ctx, rurl, prefix); err != nil || n < 4 {
		t.Errorf("keys of the history in Redis: %d, %v; want at least one per channel", n, err)
	}
}

// The centrifuge protocol's framing: several replies or pushes to a frame,
// the app-level ping, and the subscribe reply.
func TestCentrifugeFraming(t *testing.T) {
	if n, failed := countReplies([]byte(`{"id":3,"publish":{}}` + "\n" + `{"id":4,"error":{"code":100}}` + "\n{}")); n != 2 || !failed {
		t.Errorf("countReplies: %d %v", n, failed)
	}
	if n, _ := countReplies([]byte(`{"id":7}`)); n != 1 {
		t.Errorf("herald.v1 reply: %d", n)
	}
	for msg, want := range map[string]bool{"{}": true, `{"id":3,"publish":{}}` + "\n{}\n" + `{"id":4,"publish":{}}`: true, `{"push":{}}` + "\n{}": true, "{}\n" + `{"id":1}`: true, `{"id":1,"connect":{}}`: false, `{"push":{"pub":{"data":{}}}}`: false} {
		if got := isAppPing([]byte(msg)); got != want {
			t.Errorf("isAppPing(%q) = %v", msg, got)
		}
	}
	for msg, want := range map[string][2]bool{
		`{"id":1,"connect":{"client":"x"}}` + "\n" + `{"id":2,"subscribe":{}}`: {true, false},
		`{"id":1,"connect":{"client":"x"}}`:                                    {false, false},
		`{"id":1,"error":{"code":109}}`:                                        {true, true},
		`{"id":2}`:                                                             {true, false},
		`{"id":2,"error":{"code":"bad_channel"}}`:                              {true, true},
	} {
		if done, refused := subscribeOutcome([]byte(msg)); done != want[0] || refused != want[1] {
			t.Errorf("subscribeOutcome(%q) = %v %v", msg, done, refused)
		}
	}
	var msg []byte
	for i := range 3 {
		msg = append(msg, `{"push":{"channel":"c","pub":{"data":`...)
		msg = appendPayload(msg, 64, payloadInfo{stream: 1, seq: uint64(i + 1), sentNs: 5, step: 0})
		msg = append(msg, "}}}\n"...)
	}
	var seqs []uint64
	for rest := msg; ; {
		p, next, err := nextPayload(rest)
		if err != nil {
			if err != errNoPayload {
				t.Fatal(err)
			}
			break
		}
		seqs = append(seqs, p.seq)
		rest = next
	}
	if len(seqs) != 3 || seqs[2] != 3 {
		t.Errorf("payloads in a batched frame: %v", seqs)
	}
	if c := string(subscribeCommand(ProtoCentrifuge, "c", "T")); c != `{"id":1,"connect":{"token":"T"}}`+"\n"+`{"id":2,"subscribe":{"channel":"c"}}` {
		t.Errorf("centrifuge subscribe: %s", c)
	}
	if c := string(appendPublish(nil, ProtoCentrifuge, 9, "c", []byte(`"x"`))); c != `{"id":9,"publish":{"channel":"c","data":"x"}}` {
		t.Errorf("centrifuge publish: %s", c)
	}
}

func TestChurnConfig(t *testing.T) {
	for _, bad := range []Config{
		{URL: "ws://127.0.0.1:1/ws", Churn: true},
		{URL: "ws://127.0.0.1:1/ws", Churn: true, Rates: []Rate{{Max: true}}},
		{URL: "ws://127.0.0.1:1/ws", Protocol: "mqtt"},
		{URL: "ws://127.0.0.1:1/ws", Protocol: ProtoCentrifuge, PubMode: PubAPI},
	} {
		if err := bad.applyDefaults(); err == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
}
