package herald

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/protocol"
)

var testSecret = []byte("test-secret-of-enough-length-for-hs256")

type tokenClaims struct {
	jwt.RegisteredClaims
	Info     json.RawMessage `json:"info,omitempty"`
	Channels []string        `json:"channels,omitempty"`
	Channel  string          `json:"channel,omitempty"`
}

func hsToken(t testing.TB, c tokenClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func userToken(t testing.TB, user string, ttl time.Duration) string {
	c := tokenClaims{RegisteredClaims: jwt.RegisteredClaims{Subject: user}}
	if ttl != 0 {
		c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(ttl))
	}
	return hsToken(t, c)
}

func hmacVerifier(t testing.TB) *JWTVerifier {
	v, err := NewJWTVerifier(context.Background(), JWTConfig{HMACSecret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func authConfig(t testing.TB) Config {
	return Config{Tokens: hmacVerifier(t), Namespaces: []Namespace{
		{Name: ""},
		{Name: "public", AllowSubscribe: PermAnyone, AllowPublish: PermNobody},
		{Name: "private", AllowSubscribe: PermGranted, AllowPublish: PermGranted},
		{Name: "dm"},
		{Name: "room", Presence: true, AllowPresence: PermAuthenticated},
	}}
}

func (c *testClient) connect(token string) anyMsg {
	c.t.Helper()
	return c.call(protocol.Command{Cmd: "connect", Token: token})
}

func TestAuthConnect(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, authConfig(t))

	t.Run("commands before connect are refused", func(t *testing.T) {
		c := ts.client(t)
		if m := c.call(protocol.Command{Cmd: "subscribe", Channel: "a"}); m.Error == nil || m.Error.Code != protocol.CodeUnauthorized {
			t.Fatalf("got %+v", m)
		}
		c.mustOK(protocol.Command{Cmd: "ping"})
	})
	t.Run("valid token", func(t *testing.T) {
		c := ts.client(t)
		tok := hsToken(t, tokenClaims{RegisteredClaims: jwt.RegisteredClaims{Subject: "alice", ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}})
		m := c.connect(tok)
		var res protocol.ConnectResult
		if m.Error != nil || json.Unmarshal(m.Result, &res) != nil || res.User != "alice" || res.Client == "" || res.Expires == 0 {
			t.Fatalf("got %+v", m)
		}
		c.subscribe("a") // authenticated: allowed by default
		if m := c.connect(tok); m.Error == nil || m.Error.Code != protocol.CodeBadRequest {
			t.Fatalf("second connect: %+v", m)
		}
	})
	t.Run("anonymous connect gets only what namespaces allow", func(t *testing.T) {
		c := ts.client(t)
		if m := c.connect(""); m.Error != nil {
			t.Fatal(m.Error)
		}
		if m := c.call(protocol.Command{Cmd: "subscribe", Channel: "a"}); m.Error == nil || m.Error.Code != protocol.CodePermission {
			t.Fatalf("default namespace: %+v", m)
		}
		c.subscribe("public:news")
		if m := c.call(protocol.Command{Cmd: "publish", Channel: "public:news", Data: []byte("1")}); m.Error == nil || m.Error.Code != protocol.CodePermission {
			t.Fatalf("publish where nobody may: %+v", m)
		}
	})

	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaPub, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaPub})
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.RegisteredClaims{Subject: "mallory"}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	// alg confusion: HS256 "signed" with the RSA public key as the secret.
	confused, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{Subject: "mallory"}).SignedString(rsaPEM)
	rs256, _ := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.RegisteredClaims{Subject: "mallory"}).SignedString(rsaKey)
	bad := map[string]string{
		"garbled":            "not.a.token",
		"expired":            userToken(t, "bob", -time.Minute),
		"alg none":           none,
		"wrong signature":    hsToken(t, tokenClaims{RegisteredClaims: jwt.RegisteredClaims{Subject: "bob"}})[:20] + "x" + hsToken(t, tokenClaims{})[21:],
		"hs256 with rsa key": confused,
		"rs256, no rsa key":  rs256,
		"subscription token": hsToken(t, tokenClaims{RegisteredClaims: jwt.RegisteredClaims{Subject: "bob"}, Channel: "private:x"}),
	}
	for name, tok := range bad {
		t.Run("refused: "+name, func(t *testing.T) {
			t.Parallel()
			c := ts.client(t)
			if m := c.connect(tok); m.Error == nil || m.Error.Code != protocol.CodeUnauthorized {
				t.Fatalf("got %+v", m)
			}
			if ce := c.expectClose(); ce.Code != int(CloseUnauthorized) {
				t.Fatalf("close %v", ce)
			}
		})
	}
}

func TestAuthHeaderAndRaw(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, authConfig(t))
	bearer := http.Header{"Authorization": {"Bearer " + userToken(t, "carol", time.Hour)}}
	c := ts.dial(t, "/ws", bearer)
	c.subscribe("a") // no connect needed
	if m := c.connect(""); m.Error != nil {
		t.Fatal(m.Error) // connect still answers, with the user
	}

	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	for _, tc := range []struct {
		name, path string
		hdr        http.Header
		status     int
	}{
		{"bad bearer", "/ws", http.Header{"Authorization": {"Bearer garbage"}}, http.StatusUnauthorized},
		{"raw anonymous on authenticated channel", "/ws/raw?channel=a", nil, http.StatusForbidden},
		{"raw bad token", "/ws/raw?channel=a&token=garbage", nil, http.StatusUnauthorized},
	} {
		_, resp, err := d.Dial(ts.url+tc.path, tc.hdr)
		if err == nil || resp == nil || resp.StatusCode != tc.status {
			t.Errorf("%s: %v %v, want %d", tc.name, err, resp, tc.status)
		}
	}
	ts.dial(t, "/ws/raw?channel=a&token="+userToken(t, "dave", time.Hour), nil)
	ts.dial(t, "/ws/raw?channel=a", bearer)
	ts.dial(t, "/ws/raw?channel=public:news", nil) // anyone may subscribe there
}

func TestConnectTimeoutAndExpiry(t *testing.T) {
	t.Parallel()
	cfg := authConfig(t)
	cfg.ConnectTimeout = 100 * time.Millisecond
	ts := newTestServer(t, cfg)
	t.Run("no connect", func(t *testing.T) {
		t.Parallel()
		if ce := ts.client(t).expectClose(); ce.Code != int(CloseConnectTimeout) {
			t.Fatalf("close %v", ce)
		}
	})
	t.Run("token expires", func(t *testing.T) {
		t.Parallel()
		c := ts.client(t)
		// jwt's NumericDate has second precision: 2s from now expires in 1-2s.
		if m := c.connect(userToken(t, "erin", 2*time.Second)); m.Error != nil {
			t.Fatal(m.Error)
		}
		if ce := c.expectClose(); ce.Code != int(CloseTokenExpired) {
			t.Fatalf("close %v", ce)
		}
	})
	t.Run("raw token expires", func(t *testing.T) {
		t.Parallel()
		c := ts.dial(t, "/ws/raw?channel=a&token="+userToken(t, "erin", 2*time.Second), nil)
		if ce := c.expectClose(); CloseCode(ce.Code) != CloseTokenExpired {
			t.Fatalf("close %v", ce)
		}
	})
	t.Run("refresh keeps the connection", func(t *testing.T) {
		t.Parallel()
		c := ts.client(t)
		if m := c.connect(userToken(t, "fay", 2*time.Second)); m.Error != nil {
			t.Fatal(m.Error)
		}
		m := c.call(protocol.Command{Cmd: "refresh", Token: userToken(t, "fay", time.Hour)})
		var res protocol.ConnectResult
		if m.Error != nil || json.Unmarshal(m.Result, &res) != nil || res.Expires < time.Now().Add(30*time.Minute).Unix() {
			t.Fatalf("refresh: %+v", m)
		}
		if m := c.call(protocol.Command{Cmd: "refresh", Token: userToken(t, "someone-else", time.Hour)}); m.Error == nil || m.Error.Code != protocol.CodeUnauthorized {
			t.Fatalf("refresh as another user: %+v", m)
		}
		if ce := c.expectClose(); ce.Code != int(CloseUnauthorized) {
			t.Fatalf("close %v", ce)
		}
	})
}

func TestPermissions(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, authConfig(t))
	conn := func(user string, channels ...string) *testClient {
		c := ts.client(t)
		if m := c.connect(hsToken(t, tokenClaims{RegisteredClaims: jwt.RegisteredClaims{Subject: user}, Channels: channels})); m.Error != nil {
			t.Fatal(m.Error)
		}
		return c
	}
	subToken := func(user, ch string) string {
		return hsToken(t, tokenClaims{RegisteredClaims: jwt.RegisteredClaims{Subject: user}, Channel: ch})
	}
	denied := func(c *testClient, cmd protocol.Command) {
		t.Helper()
		if m := c.call(cmd); m.Error == nil || m.Error.Code != protocol.CodePermission {
			t.Errorf("%s %s: got %+v, want permission_denied", cmd.Cmd, cmd.Channel, m)
		}
	}

	// Private channels: granted by the token's channels claim…
	alice := conn("alice", "private:a")
	alice.mustOK(protocol.Command{Cmd: "publish", Channel: "private:a", Data: []byte(`1`)})
	alice.subscribe("private:a")
	denied(alice, protocol.Command{Cmd: "subscribe", Channel: "private:b"})
	// …or by a subscription token for that channel and user.
	bob := conn("bob")
	denied(bob, protocol.Command{Cmd: "subscribe", Channel: "private:b"})
	denied(bob, protocol.Command{Cmd: "subscribe", Channel: "private:b", Token: subToken("bob", "private:c")})
	denied(bob, protocol.Command{Cmd: "subscribe", Channel: "private:b", Token: subToken("alice", "private:b")})
	denied(bob, protocol.Command{Cmd: "subscribe", Channel: "private:b", Token: "garbage"})
	bob.mustOK(protocol.Command{Cmd: "subscribe", Channel: "private:b", Token: subToken("bob", "private:b")})
	bob.mustOK(protocol.Command{Cmd: "unsubscribe", Channel: "private:b"})
	bob.mustOK(protocol.Command{Cmd: "publish", Channel: "private:b", Data: []byte(`1`)}) // the grant stays
	denied(bob, protocol.Command{Cmd: "publish", Channel: "private:a", Data: []byte(`1`)})

	// User-limited channels: only the users they name.
	alice.subscribe("dm:#alice,bob")
	bob.subscribe("dm:#alice,bob")
	carol := conn("carol")
	denied(carol, protocol.Command{Cmd: "subscribe", Channel: "dm:#alice,bob"})
	denied(carol, protocol.Command{Cmd: "publish", Channel: "dm:#alice,bob", Data: []byte(`1`)})

	// Presence needs an authenticated user here.
	anon := ts.client(t)
	anon.connect("")
	denied(anon, protocol.Command{Cmd: "presence", Channel: "room:1"})
	carol.mustOK(protocol.Command{Cmd: "presence", Channel: "room:1"})

	// Server-side publishing is always allowed.
	if _, err := ts.node.Publish(context.Background(), "public:news", []byte(`1`)); err != nil {
		t.Fatal(err)
	}
}

func TestJWTKeys(t *testing.T) {
	t.Parallel()
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ctx := context.Background()
	claims := jwt.RegisteredClaims{Subject: "u1"}
	rs, _ := jwt.NewWithClaims(jwt.SigningMethodRS256, claims).SignedString(rsaKey)
	es, _ := jwt.NewWithClaims(jwt.SigningMethodES256, claims).SignedString(ecKey)
	hs, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(testSecret)

	v, err := NewJWTVerifier(ctx, JWTConfig{RSAPublicKey: &rsaKey.PublicKey, ECDSAPublicKey: &ecKey.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{"RS256": rs, "ES256": es} {
		if c, err := v.Verify(ctx, tok); err != nil || c.UserID != "u1" {
			t.Errorf("%s: %+v %v", name, c, err)
		}
	}
	if _, err := v.Verify(ctx, hs); err == nil {
		t.Error("HS256 accepted by a verifier with no HMAC secret")
	}

	// JWKS: keys fetched by kid from a URL.
	var mu sync.Mutex
	fetches := 0
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		fetches++
		mu.Unlock()
		b64 := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
		fmt.Fprintf(w, `{"keys":[{"kty":"RSA","kid":"k1","alg":"RS256","use":"sig","n":%q,"e":%q}]}`,
			b64(rsaKey.N.Bytes()), b64(big.NewInt(int64(rsaKey.E)).Bytes()))
	}))
	defer jwks.Close()
	jctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jv, err := NewJWTVerifier(jctx, JWTConfig{JWKSURL: jwks.URL})
	if err != nil {
		t.Fatal(err)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	tok.Header["kid"] = "k1"
	signed, _ := tok.SignedString(rsaKey)
	for range 3 {
		if c, err := jv.Verify(ctx, signed); err != nil || c.UserID != "u1" {
			t.Fatalf("JWKS: %+v %v", c, err)
		}
	}
	mu.Lock()
	if fetches != 1 {
		t.Errorf("JWKS fetched %d times for 3 verifications, want 1 (cached)", fetches)
	}
	mu.Unlock()
	if _, err := jv.Verify(ctx, hs); err == nil {
		t.Error("HS256 accepted by a JWKS verifier")
	}
	if _, err := NewJWTVerifier(ctx, JWTConfig{}); err == nil {
		t.Error("a verifier without keys must be refused")
	}
}
