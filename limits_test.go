package herald

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/protocol"
)

func dialStatus(t *testing.T, url string, hdr http.Header) (int, *websocket.Conn, http.Header) {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	ws, resp, err := d.Dial(url, hdr)
	if err == nil {
		t.Cleanup(func() { ws.Close() })
		return http.StatusSwitchingProtocols, ws, resp.Header
	}
	if resp == nil {
		t.Fatalf("dial: %v", err)
	}
	return resp.StatusCode, nil, resp.Header
}

func TestConnectionLimits(t *testing.T) {
	t.Parallel()
	t.Run("per IP", func(t *testing.T) {
		t.Parallel()
		ts := newTestServer(t, Config{Limits: Limits{MaxConnectionsPerIP: 2}})
		for i := range 2 {
			if st, _, _ := dialStatus(t, ts.url+"/ws", nil); st != 101 {
				t.Fatalf("connection %d: %d", i, st)
			}
		}
		if st, _, _ := dialStatus(t, ts.url+"/ws", nil); st != http.StatusTooManyRequests {
			t.Fatalf("third: %d", st)
		}
	})
	t.Run("per node", func(t *testing.T) {
		t.Parallel()
		ts := newTestServer(t, Config{Limits: Limits{MaxConnections: 1}})
		_, first, _ := dialStatus(t, ts.url+"/ws", nil)
		if st, _, _ := dialStatus(t, ts.url+"/ws", nil); st != http.StatusServiceUnavailable {
			t.Fatalf("second: %d", st)
		}
		first.Close() // a slot frees up once the first is gone
		waitFor(t, "slot", func() bool { st, _, _ := dialStatus(t, ts.url+"/ws", nil); return st == 101 })
	})
	t.Run("connect rate per IP", func(t *testing.T) {
		t.Parallel()
		ts := newTestServer(t, Config{Limits: Limits{ConnectRatePerIP: 3}})
		refused := 0
		var retry string
		for range 10 {
			if st, _, h := dialStatus(t, ts.url+"/ws", nil); st == http.StatusTooManyRequests {
				refused++
				retry = h.Get("Retry-After")
			}
		}
		if refused < 5 || retry == "" {
			t.Fatalf("%d of 10 refused (Retry-After %q), want most, with Retry-After", refused, retry)
		}
	})
	t.Run("per user", func(t *testing.T) {
		t.Parallel()
		cfg := authConfig(t)
		cfg.MaxConnectionsPerUser = 1
		ts := newTestServer(t, cfg)
		bearer := http.Header{"Authorization": {"Bearer " + userToken(t, "gus", time.Hour)}}
		if st, _, _ := dialStatus(t, ts.url+"/ws", bearer); st != 101 {
			t.Fatal(st)
		}
		if st, _, _ := dialStatus(t, ts.url+"/ws", bearer); st != http.StatusTooManyRequests {
			t.Fatalf("second by header: %d", st)
		}
		c := ts.client(t) // by connect: error, then 1008
		if m := c.connect(userToken(t, "gus", time.Hour)); m.Error == nil || m.Error.Code != protocol.CodeLimitExceeded {
			t.Fatalf("got %+v", m)
		}
		if ce := c.expectClose(); ce.Code != websocket.ClosePolicyViolation {
			t.Fatalf("close %v", ce)
		}
	})
}

// TestMessageRateFlood: a flooding client gets rate_limited errors and is
// then closed with 4007, while another client keeps receiving.
func TestMessageRateFlood(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{Limits: Limits{MessageRate: 20}})
	calm := ts.client(t)
	calm.subscribe("c")
	flood := ts.client(t)
	limited := 0
	done := make(chan struct{})
	go func() { // read the flooder's replies until it is closed
		defer close(done)
		for {
			flood.ws.SetReadDeadline(time.Now().Add(15 * time.Second))
			_, b, err := flood.ws.ReadMessage()
			if err != nil {
				return
			}
			var m anyMsg
			if json.Unmarshal(b, &m) == nil && m.Error != nil && m.Error.Code == protocol.CodeRateLimited {
				limited++
			}
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for i := 1; time.Now().Before(deadline); i++ {
		b := fmt.Appendf(nil, `{"id":%d,"cmd":"publish","channel":"c","data":%d}`, i, i)
		if err := flood.ws.WriteMessage(websocket.TextMessage, b); err != nil {
			break // closed by the server
		}
		time.Sleep(time.Millisecond) // ~1000/s: 50 times the limit
	}
	<-done
	var ce *websocket.CloseError
	_, _, err := flood.ws.ReadMessage() // the reader's error again: gorilla's are sticky
	if !errorsAs(err, &ce) || CloseCode(ce.Code) != CloseRateLimited {
		t.Fatalf("flooder ended with %v, want close 4007", err)
	}
	if limited == 0 {
		t.Fatal("no rate_limited error before the close")
	}
	// The calm subscriber received the flooder's accepted publications and
	// still gets everything else.
	if _, err := ts.node.Publish(context.Background(), "c", []byte(`"after"`)); err != nil {
		t.Fatal(err)
	}
	for {
		m := calm.readJSON()
		if string(m.Data) == `"after"` {
			break
		}
	}
	t.Logf("%d messages refused with rate_limited before the close", limited)
}

// TestIPTableSwept: the per-IP table forgets an address once its
// connections are gone and its connect-rate limiter is full again, so it
// does not grow with every address that ever connected.
func TestIPTableSwept(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{PingInterval: 50 * time.Millisecond, Limits: Limits{ConnectRatePerIP: 100}})
	c := ts.client(t)
	ping(c)
	if n := ts.node.ips.len(); n != 1 {
		t.Fatalf("%d addresses remembered with one connection, want 1", n)
	}
	c.ws.Close()
	deadline := time.Now().Add(5 * time.Second)
	for ts.node.ips.len() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d addresses still remembered 5 s after the last connection closed", ts.node.ips.len())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
