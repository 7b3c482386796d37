package client_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/client"
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
