package client_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/client"
	"github.com/heraldhq/herald/protocol"
)

// TestTokenRefresh: with GetToken, the client renews an expiring token with
// refresh before the server would close the connection (4004).
func TestTokenRefresh(t *testing.T) {
	t.Parallel()
	secret := []byte("a-test-secret-that-is-at-least-32-bytes-long")
	v, err := herald.NewJWTVerifier(context.Background(), herald.JWTConfig{HMACSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	ts := newServer(t, herald.Config{Tokens: v, Namespaces: namespaces, Logger: testLogger(t)})
	var issued atomic.Int32
	getToken := func(context.Context) (string, error) {
		issued.Add(1)
		// exp has second precision: 3s from now expires in 2 to 3 s.
		claims := jwt.RegisteredClaims{Subject: "ada", ExpiresAt: jwt.NewNumericDate(time.Now().Add(3 * time.Second))}
		return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
	}
	var rec recorder
	c := connect(t, ts.url, client.Options{GetToken: getToken, OnState: rec.onState})
	time.Sleep(4500 * time.Millisecond) // past the first token's expiry
	if c.State() != client.StateConnected || issued.Load() < 2 {
		t.Fatalf("state %v after %d tokens", c.State(), issued.Load())
	}
	for _, s := range rec.stateList() {
		if s.State == client.StateDisconnected {
			t.Fatalf("disconnected: %+v", s)
		}
	}
	if err := c.Ping(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

// TestSubscriptionToken: a channel that needs a grant takes the
// subscription token from SubscribeOptions, and GetToken supplies a fresh
// one for the resubscribe after a reconnect.
func TestSubscriptionToken(t *testing.T) {
	t.Parallel()
	secret := []byte("a-test-secret-that-is-at-least-32-bytes-long")
	v, err := herald.NewJWTVerifier(context.Background(), herald.JWTConfig{HMACSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	ts := newServer(t, herald.Config{Tokens: v, Logger: testLogger(t), Namespaces: []herald.Namespace{
		{Name: "private", HistorySize: 10, HistoryTTL: time.Minute, AllowSubscribe: herald.PermGranted},
	}})
	type claims struct {
		jwt.RegisteredClaims
		Channel string `json:"channel,omitempty"`
	}
	sign := func(c claims) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	c := connect(t, ts.url, client.Options{Token: sign(claims{RegisteredClaims: jwt.RegisteredClaims{Subject: "bo"}})})
	ctx := ctxT(t)
	var ce *client.Error
	if _, err := c.Subscribe(ctx, "private:x", client.SubscribeOptions{}); !errors.As(err, &ce) || ce.Code != protocol.CodePermission {
		t.Fatalf("without a token: %v", err)
	}
	var issued atomic.Int32
	var rec recorder
	opts := rec.sub()
	opts.GetToken = func(context.Context) (string, error) {
		issued.Add(1)
		return sign(claims{RegisteredClaims: jwt.RegisteredClaims{Subject: "bo"}, Channel: "private:x"}), nil
	}
	if _, err := c.Subscribe(ctx, "private:x", opts); err != nil {
		t.Fatal(err)
	}
	// A reconnect resubscribes with a fresh token and recovers.
	if err := ts.node().Disconnect(ctx, c.ID(), herald.CloseDisconnected, "test"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a second token", func() bool { return issued.Load() >= 2 })
	nodePublish(t, ts.node(), "private:x", 1, 3)
	waitFor(t, "3 publications", func() bool { return rec.numPubs() == 3 })
	if f := rec.failureList(); len(f) > 0 {
		t.Fatalf("failures: %v", f)
	}
}
