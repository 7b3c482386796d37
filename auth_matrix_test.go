package herald

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/protocol"
)

// TestTokenMatrix presents every kind of token on every transport that
// carries one (the Pusher endpoint takes none: its apps sign channels). All of them go through Node.verifyToken; this test is what
// keeps a transport from drifting away from it again (a subscription token
// once logged its holder in through the handshake, while connect refused it).
func TestTokenMatrix(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, authConfig(t))
	hour := jwt.NewNumericDate(time.Now().Add(time.Hour))
	claims := func(sub string) tokenClaims {
		return tokenClaims{RegisteredClaims: jwt.RegisteredClaims{Subject: sub, ExpiresAt: hour}}
	}
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.RegisteredClaims{Subject: "alice"}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	good := hsToken(t, claims("alice"))
	subClaims := claims("alice")
	subClaims.Channel = "private:only"

	type kind struct {
		name  string
		token string
		// conn: accepted as a connection token (handshake, connect,
		// refresh); sub: accepted by subscribe to private:only.
		conn, sub bool
	}
	kinds := []kind{
		{"connection token", good, true, false},
		{"subscription token", hsToken(t, subClaims), false, true},
		{"expired", hsToken(t, tokenClaims{RegisteredClaims: jwt.RegisteredClaims{Subject: "alice", ExpiresAt: jwt.NewNumericDate(time.Now().Add(-time.Minute))}}), false, false},
		{"wrong signature", good[:len(good)-4] + "AAAA", false, false},
		{"alg none", none, false, false},
		{"garbled", "not.a.token", false, false},
		{"exp as a string", stringExpToken(t, "alice"), false, false},
		{"user id with a comma", hsToken(t, claims("alice,bob")), false, false},
		{"too long", hsToken(t, tokenClaims{RegisteredClaims: jwt.RegisteredClaims{Subject: "alice", ID: strings.Repeat("x", maxTokenLen)}}), false, false},
		{"another user", hsToken(t, claims("mallory")), true, false}, // refresh refuses it
	}

	d := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 5 * time.Second}
	handshake := func(t *testing.T, path string, hdr http.Header, wantOK bool) {
		t.Helper()
		ws, resp, err := d.Dial(ts.url+path, hdr)
		switch {
		case wantOK && err != nil:
			t.Fatalf("refused: %v (%v)", err, resp)
		case !wantOK && (err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized):
			if ws != nil {
				ws.Close()
			}
			t.Fatalf("got %v %v, want 401", err, resp)
		case err == nil:
			ws.Close()
		}
	}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			bearer := http.Header{"Authorization": {"Bearer " + k.token}}
			t.Run("/ws header", func(t *testing.T) {
				if !k.conn {
					handshake(t, "/ws", bearer, false)
					return
				}
				// Accepted: the connection is the token's user, with no connect.
				c := ts.dial(t, "/ws", bearer)
				m := c.call(protocol.Command{Cmd: "subscribe", Channel: "dm:#alice,bob"})
				if ok := m.Error == nil; ok != (k.name == "connection token") {
					t.Fatalf("subscribe dm:#alice,bob: %+v", m)
				}
			})
			// The raw endpoint admits only alice to alice's channel: a
			// refused token is 401, an accepted one alice (or mallory: 403).
			raw := "/ws/raw?channel=" + url.QueryEscape("dm:#alice,bob")
			t.Run("/ws/raw header", func(t *testing.T) {
				if k.name == "another user" {
					rawForbidden(t, ts, raw, bearer)
					return
				}
				handshake(t, raw, bearer, k.conn)
			})
			t.Run("/ws/raw query", func(t *testing.T) {
				if k.name == "another user" {
					rawForbidden(t, ts, raw+"&token="+url.QueryEscape(k.token), nil)
					return
				}
				handshake(t, raw+"&token="+url.QueryEscape(k.token), nil, k.conn)
			})
			// SSE takes the same tokens as a handshake, in the header or
			// the query: a refused token is 401 before the stream, an
			// accepted one is alice's (mallory's: 403 on alice's channel).
			sse := func(t *testing.T, query url.Values, hdr http.Header) {
				t.Helper()
				query.Set("channel", "dm:#alice,bob")
				want := http.StatusUnauthorized
				switch {
				case k.name == "another user":
					want = http.StatusForbidden
				case k.conn:
					want = http.StatusOK
				}
				c, resp, body := sseGet(t, ts.srv.URL+"/sse?"+query.Encode(), hdr)
				if c != nil {
					c.close()
				}
				if resp.StatusCode != want {
					t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, want)
				}
				if k.name == "subscription token" && !strings.Contains(body, "a subscription token cannot authenticate a connection") {
					t.Fatalf("refusal %q does not say why", body)
				}
			}
			t.Run("/sse header", func(t *testing.T) { sse(t, url.Values{}, bearer) })
			t.Run("/sse query", func(t *testing.T) { sse(t, url.Values{"token": {k.token}}, nil) })
			t.Run("connect", func(t *testing.T) {
				c := ts.client(t)
				m := c.connect(k.token)
				if k.conn {
					if m.Error != nil {
						t.Fatalf("refused: %+v", m.Error)
					}
					return
				}
				if m.Error == nil || m.Error.Code != protocol.CodeUnauthorized || !strings.HasPrefix(m.Error.Message, "invalid token: ") {
					t.Fatalf("got %+v, want unauthorized", m)
				}
				if ce := c.expectClose(); ce.Code != int(CloseUnauthorized) {
					t.Fatalf("close %v, want %d", ce, CloseUnauthorized)
				}
			})
			t.Run("refresh", func(t *testing.T) {
				c := ts.client(t)
				if m := c.connect(good); m.Error != nil {
					t.Fatal(m.Error)
				}
				m := c.call(protocol.Command{Cmd: "refresh", Token: k.token})
				if k.name == "connection token" {
					if m.Error != nil {
						t.Fatalf("refused: %+v", m.Error)
					}
					return
				}
				if m.Error == nil || m.Error.Code != protocol.CodeUnauthorized {
					t.Fatalf("got %+v, want unauthorized", m)
				}
				if ce := c.expectClose(); ce.Code != int(CloseUnauthorized) {
					t.Fatalf("close %v, want %d", ce, CloseUnauthorized)
				}
			})
			t.Run("subscribe", func(t *testing.T) {
				c := ts.client(t)
				if m := c.connect(good); m.Error != nil {
					t.Fatal(m.Error)
				}
				m := c.call(protocol.Command{Cmd: "subscribe", Channel: "private:only", Token: k.token})
				if k.sub != (m.Error == nil) {
					t.Fatalf("got %+v, want accepted=%v", m, k.sub)
				}
				if !k.sub && m.Error.Code != protocol.CodePermission {
					t.Fatalf("got %+v, want permission_denied", m)
				}
			})
		})
	}
}

func rawForbidden(t *testing.T, ts *testServer, path string, hdr http.Header) {
	t.Helper()
	_, resp, err := websocket.DefaultDialer.Dial(ts.url+path, hdr)
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("got %v %v, want 403", err, resp)
	}
}

// stringExpToken is an HS256 token whose exp is a string holding a number,
// which golang-jwt accepts and RFC 7519 does not.
func stringExpToken(t testing.TB, sub string) string {
	t.Helper()
	enc := base64.RawURLEncoding
	exp := time.Now().Add(time.Hour).Unix()
	head := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	body := enc.EncodeToString([]byte(`{"sub":"` + sub + `","exp":"` + strconv.FormatInt(exp, 10) + `"}`))
	sig, err := jwt.SigningMethodHS256.Sign(head+"."+body, testSecret)
	if err != nil {
		t.Fatal(err)
	}
	return head + "." + body + "." + enc.EncodeToString(sig)
}

// TestTokenVerifierStrict checks JWTVerifier itself on the claims RFC 7519
// types strictly, without a node.
func TestTokenVerifierStrict(t *testing.T) {
	t.Parallel()
	v := hmacVerifier(t)
	if _, err := v.Verify(context.Background(), stringExpToken(t, "alice")); err == nil || !strings.Contains(err.Error(), "exp must be a number") {
		t.Fatalf("string exp: %v", err)
	}
	c, err := v.Verify(context.Background(), userToken(t, "alice", time.Hour))
	if err != nil || c.UserID != "alice" {
		t.Fatalf("numeric exp: %+v %v", c, err)
	}
}

func TestUserLimit(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		channel string
		users   []string
		limited bool
	}{
		{"chat:lobby", nil, false},
		{"dm:#alice,bob", []string{"alice", "bob"}, true},
		{"dm:#alice", []string{"alice"}, true},
		{"#alice", []string{"alice"}, true},
		// Only the first '#' starts the list: the rest is part of a user id.
		{"dm:#a#b,c", []string{"a#b", "c"}, true},
		{"dm:x#alice,bob", []string{"alice", "bob"}, true},
		{"dm:#", []string{""}, true}, // admits nobody: user "" is anonymous
	} {
		users, limited := userLimit(tc.channel)
		if limited != tc.limited || strings.Join(users, "|") != strings.Join(tc.users, "|") {
			t.Errorf("userLimit(%q) = %q, %v; want %q, %v", tc.channel, users, limited, tc.users, tc.limited)
		}
	}
}

// A user id with a ',' from Config.Authenticate is refused like one from a
// token: it could never be named in a user-limited channel.
func TestAuthenticateUserIDWithComma(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{Authenticate: func(r *http.Request) (Credentials, error) {
		return Credentials{UserID: r.Header.Get("X-Test-User")}, nil
	}})
	_, resp, err := websocket.DefaultDialer.Dial(ts.url+"/ws", http.Header{"X-Test-User": {"alice,bob"}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("got %v %v, want 401", err, resp)
	}
	ts.dial(t, "/ws", http.Header{"X-Test-User": {"alice"}})
}

// A handshake token must be for the user Config.Authenticate found: the
// two credentials of one request may not disagree.
func TestHandshakeTokenForAnotherUser(t *testing.T) {
	t.Parallel()
	cfg := authConfig(t)
	cfg.Authenticate = func(r *http.Request) (Credentials, error) {
		return Credentials{UserID: r.Header.Get("X-Test-User")}, nil
	}
	ts := newTestServer(t, cfg)
	hdr := http.Header{"X-Test-User": {"alice"}, "Authorization": {"Bearer " + userToken(t, "mallory", time.Hour)}}
	_, resp, err := websocket.DefaultDialer.Dial(ts.url+"/ws", hdr)
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("got %v %v, want 401", err, resp)
	}
	hdr.Set("Authorization", "Bearer "+userToken(t, "alice", time.Hour))
	ts.dial(t, "/ws", hdr)
}

// Oversized credentials: a token over maxTokenLen is refused unread (401);
// a header block over the http.Server's MaxHeaderBytes (Go's default,
// 1 MiB, which herald serve keeps) never reaches Herald: net/http answers
// 431.
func TestHugeAuthorizationHeader(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, authConfig(t))
	for _, tc := range []struct {
		size   int
		status int
	}{
		{maxTokenLen + 1, http.StatusUnauthorized},
		{100 << 10, http.StatusUnauthorized},
		{2 << 20, http.StatusRequestHeaderFieldsTooLarge},
	} {
		hdr := http.Header{"Authorization": {"Bearer " + strings.Repeat("a", tc.size)}}
		_, resp, err := websocket.DefaultDialer.Dial(ts.url+"/ws", hdr)
		if err == nil || resp == nil || resp.StatusCode != tc.status {
			t.Errorf("%d-byte token: got %v %v, want %d", tc.size, err, resp, tc.status)
		}
	}
}
