package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// mint runs `herald token` with args and env and returns the token.
func mint(t *testing.T, env []string, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	if err := run(context.Background(), append([]string{"token"}, args...), env, &out); err != nil {
		t.Fatalf("herald token %q: %v", args, err)
	}
	tok, ok := strings.CutSuffix(out.String(), "\n")
	if !ok || strings.ContainsAny(tok, " \n") || strings.Count(tok, ".") != 2 {
		t.Fatalf("herald token printed %q, want one token on one line", out.String())
	}
	return tok
}

// TestTokenAcceptedByServer: a token minted by `herald token` is accepted
// by a server with the same secret, which reports its user, and refused by
// a server with another secret (close 4501).
func TestTokenAcceptedByServer(t *testing.T) {
	t.Parallel()
	tok := mint(t, nil, "--secret", testSecret, "--user", "alice", "--ttl", "1h", "--info", `{"name":"Alice"}`)
	same := startServer(t, []string{"HERALD_JWT_SECRET=" + testSecret})
	other := startServer(t, []string{"HERALD_JWT_SECRET=" + otherSecret})
	wantUser(t, same, tok, "alice")
	wantRefused(t, other, tok)

	// The same, from the environment, and from files.
	dir := t.TempDir()
	file := filepath.Join(dir, "secret")
	if err := os.WriteFile(file, []byte(testSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	wantUser(t, same, mint(t, []string{"HERALD_JWT_SECRET=" + testSecret}, "--user", "bob"), "bob")
	wantUser(t, same, mint(t, []string{"HERALD_JWT_SECRET_FILE=" + file}, "--user", "carol"), "carol")
	wantUser(t, same, mint(t, []string{"HERALD_JWT_SECRET=" + otherSecret}, "--secret-file", file, "--user", "dave"), "dave")
}

// TestTokenClaims decodes what `herald token` mints.
func TestTokenClaims(t *testing.T) {
	t.Parallel()
	parse := func(tok string) tokenClaims {
		t.Helper()
		var c tokenClaims
		if _, err := jwt.ParseWithClaims(tok, &c, func(*jwt.Token) (any, error) { return []byte(testSecret), nil },
			jwt.WithValidMethods([]string{"HS256"})); err != nil {
			t.Fatal(err)
		}
		return c
	}
	env := []string{"HERALD_JWT_SECRET=" + testSecret, "HERALD_JWT_ISSUER=https://auth.test", "HERALD_JWT_AUDIENCE=herald"}
	c := parse(mint(t, env, "--user", "alice", "--ttl", "90m", "--info", `{"name":"Alice"}`, "--channels", "private:a, private:b"))
	if c.Subject != "alice" || string(c.Info) != `{"name":"Alice"}` || !reflect.DeepEqual(c.Channels, []string{"private:a", "private:b"}) ||
		c.Channel != "" || c.Issuer != "https://auth.test" || !reflect.DeepEqual(c.Audience, jwt.ClaimStrings{"herald"}) {
		t.Fatalf("claims %+v", c)
	}
	if d := time.Until(c.ExpiresAt.Time); d < 89*time.Minute || d > 91*time.Minute {
		t.Fatalf("expires in %v, want 90m", d)
	}
	if c.IssuedAt == nil || time.Since(c.IssuedAt.Time) > time.Minute {
		t.Fatalf("iat %v", c.IssuedAt)
	}
	c = parse(mint(t, env, "--user", "bob", "--channel", "private:x", "--issuer", "me"))
	if c.Channel != "private:x" || c.Channels != nil || c.Issuer != "me" || time.Until(c.ExpiresAt.Time) > time.Hour {
		t.Fatalf("subscription token claims %+v", c)
	}
}

func TestTokenErrors(t *testing.T) {
	t.Parallel()
	secret := []string{"HERALD_JWT_SECRET=" + testSecret}
	for _, c := range []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"no secret", []string{"--user", "a"}, nil, "no secret: give --secret-file, --secret, HERALD_JWT_SECRET_FILE or HERALD_JWT_SECRET"},
		{"short secret", []string{"--user", "a", "--secret", "hunter2"}, nil, "invalid secret: too short (7 bytes)"},
		{"both secrets", []string{"--user", "a", "--secret", testSecret, "--secret-file", "/x"}, nil, "--secret and --secret-file both given"},
		{"both secret variables", []string{"--user", "a"}, append([]string{"HERALD_JWT_SECRET_FILE=/x"}, secret...), "both set"},
		{"missing secret file", []string{"--user", "a", "--secret-file", "/nonexistent/secret"}, nil, "invalid secret file /nonexistent/secret"},
		{"no user", nil, secret, "--user is required"},
		{"zero ttl", []string{"--user", "a", "--ttl", "0s"}, secret, "invalid --ttl 0s: must be positive"},
		{"bad ttl", []string{"--user", "a", "--ttl", "soon"}, secret,
			`failed to parse token arguments: invalid value "soon" for flag -ttl: want a duration such as 30m, 1h or 24h (see herald help token)`},
		{"ttl without unit", []string{"--user", "a", "--ttl", "3600"}, secret, `invalid value "3600" for flag -ttl: want a duration such as 30m, 1h or 24h`},
		{"bad info", []string{"--user", "a", "--info", "{name:Alice}"}, secret, `invalid --info "{name:Alice}": not JSON`},
		{"bad channel", []string{"--user", "a", "--channels", "ok,not ok"}, secret, `invalid channel "not ok" in --channels`},
		{"bad subscription channel", []string{"--user", "a", "--channel", "a b"}, secret, `invalid --channel "a b"`},
		{"channel and channels", []string{"--user", "a", "--channel", "x", "--channels", "y"}, secret, "a token is one or the other"},
		{"stray argument", []string{"--user", "a", "extra"}, secret, `token takes no arguments, got ["extra"]`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(context.Background(), append([]string{"token"}, c.args...), c.env, &out)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
			if out.Len() != 0 {
				t.Fatalf("printed %q on failure", out.String())
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), testSecret) {
				t.Fatalf("the error shows the secret: %v", err)
			}
		})
	}
}

func TestTokenHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"token", "-h"}, {"help", "token"}} {
		var out bytes.Buffer
		if err := run(context.Background(), args, nil, &out); err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		if !strings.Contains(out.String(), "Usage: herald token") || !strings.Contains(out.String(), "HERALD_JWT_SECRET") {
			t.Fatalf("%q printed %q", args, out.String())
		}
	}
	var out bytes.Buffer
	_ = run(context.Background(), []string{"help"}, nil, &out)
	if !strings.Contains(out.String(), "herald token") {
		t.Fatalf("herald help does not list token: %q", out.String())
	}
}
