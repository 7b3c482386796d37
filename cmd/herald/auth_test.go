package main

import (
	"bufio"
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
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald"
)

const (
	testSecret  = "test-secret-0123456789-abcdefghij-KLMNOP"
	otherSecret = "another-secret-0123456789-abcdefghij-QRS"
)

// signToken signs claims with method and key.
func signToken(t *testing.T, method jwt.SigningMethod, key any, c tokenClaims, kid string) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// userClaims are the claims of a connection token for user, valid an hour.
func userClaims(user string) tokenClaims {
	return tokenClaims{RegisteredClaims: jwt.RegisteredClaims{Subject: user, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}}
}

func writePEM(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func writePublicKey(t *testing.T, name string, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, name, "PUBLIC KEY", der)
}

// connectAs sends connect with token and returns the reply and its result.
func connectAs(t *testing.T, ws *websocket.Conn, token string) (wireMsg, struct{ Client, User string }) {
	t.Helper()
	cmd, _ := json.Marshal(map[string]any{"id": 1, "cmd": "connect", "token": token})
	m := request(t, ws, string(cmd))
	var res struct{ Client, User string }
	if m.Error == nil {
		if err := json.Unmarshal(m.Result, &res); err != nil {
			t.Fatalf("connect result %s: %v", m.Result, err)
		}
	}
	return m, res
}

// wantUser connects with token and checks that the server says it is user.
func wantUser(t *testing.T, s *server, token, user string) {
	t.Helper()
	ws := mustDialWS(t, "ws://"+s.addr+"/ws", nil)
	m, res := connectAs(t, ws, token)
	if m.Error != nil || res.User != user || res.Client == "" {
		t.Fatalf("connect: error %s, result %+v; want user %q", m.Error, res, user)
	}
}

// wantRefused connects with token and checks that it is refused: an
// unauthorized error, then close 4501.
func wantRefused(t *testing.T, s *server, token string) {
	t.Helper()
	ws := mustDialWS(t, "ws://"+s.addr+"/ws", nil)
	if m, _ := connectAs(t, ws, token); m.errorCode() != "unauthorized" {
		t.Fatalf("connect: got %+v, want an unauthorized error", m)
	}
	if code := expectClose(t, ws); herald.CloseCode(code) != herald.CloseUnauthorized {
		t.Fatalf("close %d, want %d", code, herald.CloseUnauthorized)
	}
}

// logLines parses JSON log lines.
func logLines(t *testing.T, logs string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", sc.Text(), err)
		}
		lines = append(lines, m)
	}
	return lines
}

// TestServeOpenModeWarns: without a key, the server logs at WARN, before it
// listens, that anyone may connect, subscribe and publish on every channel
// on both endpoints, and how to turn authentication on. With a key it says
// which kinds of key are on instead.
func TestServeOpenModeWarns(t *testing.T) {
	t.Parallel()
	openSrv := startServer(t, nil)
	var warned bool
	for _, l := range logLines(t, openSrv.logs.String()) {
		if l["msg"] == "listening" {
			break // the warning must come first
		}
		if l["level"] == "WARN" && l["msg"] == openModeWarning {
			warned = true
		}
	}
	if !warned {
		t.Fatalf("no open-mode warning before listening:\n%s", openSrv.logs)
	}
	for _, want := range []string{
		"AUTHENTICATION IS OFF", "anyone who can reach this server may connect, subscribe and publish on every channel",
		"(/ws)", "(/ws/raw)", "jwt_secret_file", "jwks_url", "herald token",
	} {
		if !strings.Contains(openModeWarning, want) {
			t.Errorf("the warning does not say %q", want)
		}
	}
	// The open server lets an anonymous client do everything.
	ws := mustDialWS(t, "ws://"+openSrv.addr+"/ws", nil)
	call(t, ws, `{"id":1,"cmd":"subscribe","channel":"anything"}`)
	call(t, ws, `{"id":2,"cmd":"publish","channel":"elsewhere","data":1}`)

	closed := startServer(t, []string{"HERALD_JWT_SECRET=" + testSecret})
	logs := closed.logs.String()
	if strings.Contains(logs, "AUTHENTICATION IS OFF") {
		t.Fatalf("open-mode warning with a key:\n%s", logs)
	}
	if !strings.Contains(logs, `"msg":"token authentication on","keys":"hmac"`) {
		t.Fatalf("no log line saying authentication is on:\n%s", logs)
	}
	ws = mustDialWS(t, "ws://"+closed.addr+"/ws", nil)
	if m := request(t, ws, `{"id":1,"cmd":"subscribe","channel":"anything"}`); m.errorCode() != "unauthorized" {
		t.Fatalf("subscribe before connect on a server with a key: %+v", m)
	}
}

// TestServeOpenModeNamespaceWarning: a namespace permission that only
// token holders can meet is flagged when there are no tokens.
func TestServeOpenModeNamespaceWarning(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil, "--config", writeFile(t, "namespaces:\n  - name: private\n    allow_subscribe: granted\n"))
	if !strings.Contains(s.logs.String(), `"msg":"namespace permission needs token authentication, which is off: no client qualifies","namespace":"private","allow_subscribe":"granted"`) {
		t.Fatalf("no warning:\n%s", s.logs)
	}
}

// TestServeSecretNotLogged drives a server whose secret comes from a flag
// (the worst place) through good and bad tokens on every transport, at debug
// level, and checks that neither the secret nor any token reaches the log.
func TestServeSecretNotLogged(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil, "--jwt-secret", testSecret, "--log-level", "debug", "--close-grace", "100ms",
		"--config", writeFile(t, "namespaces:\n  - name: \"\"\n  - name: private\n    allow_subscribe: granted\n"))
	good := signToken(t, jwt.SigningMethodHS256, []byte(testSecret), userClaims("alice"), "")
	forged := signToken(t, jwt.SigningMethodHS256, []byte(otherSecret), userClaims("mallory"), "")
	expired := signToken(t, jwt.SigningMethodHS256, []byte(testSecret),
		tokenClaims{RegisteredClaims: jwt.RegisteredClaims{Subject: "bob", ExpiresAt: jwt.NewNumericDate(time.Now().Add(-time.Hour))}}, "")
	subForged := signToken(t, jwt.SigningMethodHS256, []byte(otherSecret),
		tokenClaims{RegisteredClaims: jwt.RegisteredClaims{Subject: "alice"}, Channel: "private:x"}, "")
	base := "ws://" + s.addr

	wantUser(t, s, good, "alice")
	wantRefused(t, s, forged)
	wantRefused(t, s, expired)
	wantRefused(t, s, "garbage."+testSecret+".garbage")
	ws := mustDialWS(t, base+"/ws", http.Header{"Authorization": {"Bearer " + good}})
	if m := request(t, ws, `{"id":1,"cmd":"subscribe","channel":"private:x","token":"`+subForged+`"}`); m.errorCode() != "permission_denied" {
		t.Fatalf("forged subscription token: %+v", m)
	}
	for _, c := range []struct {
		url string
		hdr http.Header
	}{
		{base + "/ws", http.Header{"Authorization": {"Bearer " + forged}}},
		{base + "/ws/raw?channel=a&token=" + forged, nil},
	} {
		if _, resp, err := dialWS(t, c.url, c.hdr); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%s: %v %v, want 401", c.url, err, resp)
		}
	}
	mustDialWS(t, base+"/ws/raw?channel=a&token="+good, nil)
	if err := s.stop(t); err != nil {
		t.Fatal(err)
	}

	logs := s.logs.String()
	if !strings.Contains(logs, `"msg":"token refused"`) || !strings.Contains(logs, "jwt_secret was given as a flag") {
		t.Fatalf("the refusals and the flag warning should be logged:\n%s", logs)
	}
	for name, leak := range map[string]string{
		"secret": testSecret, "good token": good, "forged token": forged, "expired token": expired,
		"subscription token": subForged, "signature": good[strings.LastIndexByte(good, '.')+1:],
	} {
		if strings.Contains(logs, leak) {
			t.Errorf("the log holds the %s:\n%s", name, logs)
		}
	}
}

// TestServeSecretFile: the secret comes from a file, trailing newline
// ignored; tokens signed with it pass, others do not.
func TestServeSecretFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte(testSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, []string{"HERALD_JWT_SECRET_FILE=" + path})
	wantUser(t, s, signToken(t, jwt.SigningMethodHS256, []byte(testSecret), userClaims("alice"), ""), "alice")
	wantRefused(t, s, signToken(t, jwt.SigningMethodHS256, []byte(testSecret+"\n"), userClaims("alice"), ""))
	if strings.Contains(s.logs.String(), testSecret) {
		t.Fatalf("secret logged:\n%s", s.logs)
	}
}

// TestServeTokenKeys starts servers with each kind of key and checks which
// tokens pass: the right ones, and none of the classic forgeries (alg none,
// HS256 signed with the RSA public key, a key of the wrong kind).
func TestServeTokenKeys(t *testing.T) {
	t.Parallel()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaPEM := writePublicKey(t, "rsa.pem", &rsaKey.PublicKey)
	ecPEM := writePublicKey(t, "ec.pem", &ecKey.PublicKey)
	rsaPEMBytes, err := os.ReadFile(rsaPEM)
	if err != nil {
		t.Fatal(err)
	}

	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b64 := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"keys":[{"kty":"RSA","kid":"k1","alg":"RS256","use":"sig","n":%q,"e":%q}]}`,
			b64(rsaKey.N.Bytes()), b64(big.NewInt(int64(rsaKey.E)).Bytes()))
	}))
	t.Cleanup(jwks.Close) // registered first: runs after the servers have stopped

	alice := userClaims("alice")
	none := signToken(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, alice, "")
	rs256 := signToken(t, jwt.SigningMethodRS256, rsaKey, alice, "")
	es256 := signToken(t, jwt.SigningMethodES256, ecKey, alice, "")
	confused := signToken(t, jwt.SigningMethodHS256, rsaPEMBytes, alice, "")
	hs256 := signToken(t, jwt.SigningMethodHS256, []byte(testSecret), alice, "")
	withIss := func(iss, aud string) string {
		c := userClaims("alice")
		c.Issuer = iss
		if aud != "" {
			c.Audience = jwt.ClaimStrings{aud}
		}
		return signToken(t, jwt.SigningMethodHS256, []byte(testSecret), c, "")
	}

	for _, c := range []struct {
		name     string
		args     []string
		accepted []string
		refused  map[string]string
	}{
		{"rsa", []string{"--jwt-rsa-public-key", rsaPEM}, []string{rs256},
			map[string]string{"alg none": none, "HS256 signed with the RSA public key": confused, "ES256": es256, "HS256": hs256}},
		{"ecdsa", []string{"--jwt-ecdsa-public-key", ecPEM}, []string{es256},
			map[string]string{"alg none": none, "RS256": rs256, "HS256": hs256}},
		{"jwks", []string{"--jwks-url", jwks.URL}, []string{signToken(t, jwt.SigningMethodRS256, rsaKey, alice, "k1")},
			map[string]string{"unknown kid": signToken(t, jwt.SigningMethodRS256, rsaKey, alice, "k2"), "alg none": none, "HS256": hs256}},
		{"issuer and audience", []string{"--jwt-secret", testSecret, "--jwt-issuer", "https://auth.test", "--jwt-audience", "herald"},
			[]string{withIss("https://auth.test", "herald")},
			map[string]string{"no issuer": hs256, "other issuer": withIss("https://evil.test", "herald"), "other audience": withIss("https://auth.test", "other")}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			s := startServer(t, nil, c.args...)
			for _, tok := range c.accepted {
				wantUser(t, s, tok, "alice")
			}
			for name, tok := range c.refused {
				t.Run(name, func(t *testing.T) { wantRefused(t, s, tok) })
			}
		})
	}
}

// TestServeJWKSUnreachable: a key set that cannot be fetched at start does
// not stop the server, which logs the failure and refuses the tokens it
// cannot check.
func TestServeJWKSUnreachable(t *testing.T) {
	t.Parallel()
	jwks := httptest.NewServer(http.NotFoundHandler())
	url := jwks.URL
	jwks.Close() // nothing listens there any more
	s := startServer(t, nil, "--jwks-url", url)
	if !strings.Contains(s.logs.String(), `"level":"WARN","msg":"JWKS refresh failed"`) {
		t.Fatalf("no JWKS warning:\n%s", s.logs)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	wantRefused(t, s, signToken(t, jwt.SigningMethodRS256, key, userClaims("alice"), "k1"))
}

// TestServeTokenTransports: a token travels in connect, in an
// Authorization: Bearer header, or in raw mode's token query parameter.
func TestServeTokenTransports(t *testing.T) {
	t.Parallel()
	s := startServer(t, []string{"HERALD_JWT_SECRET=" + testSecret})
	tok := signToken(t, jwt.SigningMethodHS256, []byte(testSecret), userClaims("carol"), "")
	base := "ws://" + s.addr

	ws := mustDialWS(t, base+"/ws", http.Header{"Authorization": {"Bearer " + tok}})
	call(t, ws, `{"id":1,"cmd":"subscribe","channel":"news"}`) // no connect needed
	raw := mustDialWS(t, base+"/ws/raw?channel=news&token="+tok, nil)
	if err := raw.WriteMessage(websocket.TextMessage, []byte(`"from raw"`)); err != nil {
		t.Fatal(err)
	}
	if _, b := readMessage(t, ws); string(b) != `{"push":"pub","channel":"news","data":"from raw"}` {
		t.Fatalf("got %s", b)
	}
	for _, c := range []struct {
		name, path string
		hdr        http.Header
		status     int
	}{
		{"bad bearer", "/ws", http.Header{"Authorization": {"Bearer garbage"}}, http.StatusUnauthorized},
		{"raw, bad token", "/ws/raw?channel=news&token=garbage", nil, http.StatusUnauthorized},
		{"raw, no token", "/ws/raw?channel=news", nil, http.StatusForbidden},
	} {
		if _, resp, err := dialWS(t, base+c.path, c.hdr); err == nil || resp == nil || resp.StatusCode != c.status {
			t.Errorf("%s: %v %v, want %d", c.name, err, resp, c.status)
		}
	}
}

// TestServeConnectTimeout: a protocol client that never sends connect is
// closed with 4005 after connect_timeout.
func TestServeConnectTimeout(t *testing.T) {
	t.Parallel()
	s := startServer(t, []string{"HERALD_JWT_SECRET=" + testSecret}, "--connect-timeout", "200ms")
	ws := mustDialWS(t, "ws://"+s.addr+"/ws", nil)
	start := time.Now()
	if code := expectClose(t, ws); herald.CloseCode(code) != herald.CloseConnectTimeout {
		t.Fatalf("close %d, want %d", code, herald.CloseConnectTimeout)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("closed after %v", d)
	}
}

// TestServeNamespacePermissions: the allow_* settings of the config file
// reach the server, with tokens minted by `herald token`.
func TestServeNamespacePermissions(t *testing.T) {
	t.Parallel()
	s := startServer(t, []string{"HERALD_JWT_SECRET=" + testSecret}, "--config", writeFile(t, `namespaces:
  - name: news
    allow_subscribe: anyone
    allow_publish: nobody
  - name: private
    allow_subscribe: granted
    allow_publish: granted
  - name: dm
  - name: room
    presence: true
    history_size: 10
    allow_presence: nobody
    allow_history: nobody
`))
	env := []string{"HERALD_JWT_SECRET=" + testSecret}
	base := "ws://" + s.addr

	anon := mustDialWS(t, base+"/ws", nil)
	call(t, anon, `{"id":1,"cmd":"connect"}`) // anonymous
	call(t, anon, `{"id":2,"cmd":"subscribe","channel":"news:sport"}`)
	for _, cmd := range []string{
		`{"id":3,"cmd":"publish","channel":"news:sport","data":1}`,
		`{"id":4,"cmd":"subscribe","channel":"room:1"}`, // default: authenticated
		`{"id":5,"cmd":"subscribe","channel":"private:x"}`,
	} {
		if m := request(t, anon, cmd); m.errorCode() != "permission_denied" {
			t.Errorf("anonymous %s: %+v, want permission_denied", cmd, m)
		}
	}

	bob := mustDialWS(t, base+"/ws", nil)
	if m, res := connectAs(t, bob, mint(t, env, "--user", "bob", "--channels", "private:a,private:b")); m.Error != nil || res.User != "bob" {
		t.Fatalf("connect: %+v", m)
	}
	call(t, bob, `{"id":2,"cmd":"subscribe","channel":"private:a"}`)
	call(t, bob, `{"id":3,"cmd":"publish","channel":"private:b","data":1}`)
	call(t, bob, `{"id":4,"cmd":"subscribe","channel":"room:1"}`)
	call(t, bob, `{"id":5,"cmd":"subscribe","channel":"dm:#alice,bob"}`)
	for _, cmd := range []string{
		`{"id":6,"cmd":"subscribe","channel":"private:c"}`,
		`{"id":7,"cmd":"presence","channel":"room:1"}`,
		`{"id":12,"cmd":"history","channel":"room:1"}`,
		`{"id":8,"cmd":"subscribe","channel":"dm:#alice,carol"}`,
		`{"id":9,"cmd":"subscribe","channel":"private:d","token":"` + mint(t, env, "--user", "alice", "--channel", "private:d") + `"}`,
		`{"id":10,"cmd":"subscribe","channel":"private:d","token":"` + mint(t, env, "--user", "bob", "--channel", "private:e") + `"}`,
	} {
		if m := request(t, bob, cmd); m.errorCode() != "permission_denied" {
			t.Errorf("bob %s: %+v, want permission_denied", cmd, m)
		}
	}
	// A subscription token for bob and private:d grants it.
	call(t, bob, `{"id":11,"cmd":"subscribe","channel":"private:d","token":"`+mint(t, env, "--user", "bob", "--channel", "private:d")+`"}`)

	// A raw client may subscribe to news (anyone), but its first message,
	// a publish where nobody may publish, closes it with 1008.
	raw := mustDialWS(t, base+"/ws/raw?channel=news:sport", nil)
	if err := raw.WriteMessage(websocket.TextMessage, []byte(`"spam"`)); err != nil {
		t.Fatal(err)
	}
	if code := expectClose(t, raw); code != websocket.ClosePolicyViolation {
		t.Fatalf("raw publish where not allowed: close %d, want 1008", code)
	}
}

// TestServeLimits: each limit setting reaches the server.
func TestServeLimits(t *testing.T) {
	t.Parallel()
	dialStatus := func(t *testing.T, url string, hdr http.Header) int {
		t.Helper()
		_, resp, err := dialWS(t, url, hdr)
		if err == nil {
			return http.StatusSwitchingProtocols
		}
		if resp == nil {
			t.Fatalf("dial %s: %v", url, err)
		}
		return resp.StatusCode
	}
	t.Run("max_connections", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, nil, "--max-connections", "1")
		mustDialWS(t, "ws://"+s.addr+"/ws", nil)
		if st := dialStatus(t, "ws://"+s.addr+"/ws", nil); st != http.StatusServiceUnavailable {
			t.Fatalf("second connection: %d, want 503", st)
		}
	})
	t.Run("max_connections_per_ip", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, []string{"HERALD_MAX_CONNECTIONS_PER_IP=2"})
		mustDialWS(t, "ws://"+s.addr+"/ws", nil)
		mustDialWS(t, "ws://"+s.addr+"/ws/raw?channel=x", nil)
		if st := dialStatus(t, "ws://"+s.addr+"/ws", nil); st != http.StatusTooManyRequests {
			t.Fatalf("third connection: %d, want 429", st)
		}
	})
	t.Run("max_connections_per_user", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, []string{"HERALD_JWT_SECRET=" + testSecret}, "--max-connections-per-user", "1")
		bearer := http.Header{"Authorization": {"Bearer " + signToken(t, jwt.SigningMethodHS256, []byte(testSecret), userClaims("gus"), "")}}
		first := mustDialWS(t, "ws://"+s.addr+"/ws", bearer)
		// The node counts a user's connection once it is registered, just
		// after the upgrade: a reply proves it is. (Two handshakes of one
		// user racing each other can both pass the cap: see docs/security.md.)
		call(t, first, `{"id":1,"cmd":"ping"}`)
		if st := dialStatus(t, "ws://"+s.addr+"/ws", bearer); st != http.StatusTooManyRequests {
			t.Fatalf("second connection of the user: %d, want 429", st)
		}
	})
	t.Run("connect_rate_per_ip", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, nil, "--connect-rate-per-ip", "0.5") // one now, the next in 2s
		mustDialWS(t, "ws://"+s.addr+"/ws", nil)
		_, resp, err := dialWS(t, "ws://"+s.addr+"/ws", nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("second connection at once: %v %v, want 429 with Retry-After", err, resp)
		}
		// off lifts the cap.
		s = startServer(t, nil, "--connect-rate-per-ip", "off")
		for range 20 {
			mustDialWS(t, "ws://"+s.addr+"/ws", nil)
		}
	})
	t.Run("message_rate", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, nil, "--message-rate", "0.1", "--message-burst", "3")
		ws := mustDialWS(t, "ws://"+s.addr+"/ws", nil)
		codes := make([]string, 0, 5)
		for i := range 5 { // one message per 10s, bursts of 3: 3 pass, then rate_limited
			codes = append(codes, request(t, ws, fmt.Sprintf(`{"id":%d,"cmd":"ping"}`, i+1)).errorCode())
		}
		if strings.Join(codes, ",") != ",,,rate_limited,rate_limited" {
			t.Fatalf("error codes %q, want 3 successes then rate_limited", codes)
		}
		// A raw client over the rate is closed at once.
		raw := mustDialWS(t, "ws://"+s.addr+"/ws/raw?channel=flood", nil)
		for i := range 4 {
			if err := raw.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, "%d", i)); err != nil {
				t.Fatal(err)
			}
		}
		if code := expectClose(t, raw); herald.CloseCode(code) != herald.CloseRateLimited {
			t.Fatalf("raw flood: close %d, want 4007", code)
		}
	})
}

// TestServeKeyErrors: a key that cannot be used stops serve before it
// listens, with an error that names the setting (and never the secret).
func TestServeKeyErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	weakRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"missing secret file", []string{"--jwt-secret-file", filepath.Join(dir, "nope")}, "invalid jwt_secret_file"},
		{"short secret file", []string{"--jwt-secret-file", write("short", "s3cr3t-value\n")}, "too short (12 bytes)"},
		{"garbage RSA key", []string{"--jwt-rsa-public-key", write("garbage.pem", "not a key")}, "invalid jwt_rsa_public_key"},
		{"EC key as RSA key", []string{"--jwt-rsa-public-key", writePublicKey(t, "ec.pem", &p256.PublicKey)}, "want an RSA public key"},
		{"weak RSA key", []string{"--jwt-rsa-public-key", writePublicKey(t, "weak.pem", &weakRSA.PublicKey)}, "a 1024-bit RSA key is too weak"},
		{"P-384 key", []string{"--jwt-ecdsa-public-key", writePublicKey(t, "p384.pem", &p384.PublicKey)}, "the key is on P-384, but ES256 needs P-256"},
		{"missing ECDSA key", []string{"--jwt-ecdsa-public-key", filepath.Join(dir, "nope.pem")}, "failed to read jwt_ecdsa_public_key"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var logs strings.Builder
			err := execute(context.Background(), append([]string{"serve", "--addr", "127.0.0.1:0"}, c.args...), nil, io.Discard, &logs)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
			if strings.Contains(err.Error(), "s3cr3t-value") || strings.Contains(logs.String(), "listening") {
				t.Fatalf("error %v; logs:\n%s", err, logs.String())
			}
		})
	}
}
