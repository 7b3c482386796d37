// Package testenv tells the integration tests which Redis and NATS servers
// to run against, so that `go test ./...` runs them wherever those servers
// answer, and CI fails instead of skipping when one is missing.
//
// Each server is chosen from one variable, HERALD_TEST_REDIS or
// HERALD_TEST_NATS:
//
//   - unset or empty: the server at its usual local address
//     (redis://127.0.0.1:6379/0, nats://127.0.0.1:4222) if one answers there
//     as that server (Redis answers PING; NATS announces JetStream), else the
//     test skips and says what answered or did not;
//   - "off": the test skips, whatever answers locally;
//   - a URL: that server is required: the test fails if nothing accepts a
//     connection at the URL's address. .ci/run sets both, so a missing
//     server fails CI.
//
// Every test that uses a shared server must keep its keys, subjects and
// streams under a prefix of its own (random per run), and delete them when
// it ends: packages run in parallel against the same server.
package testenv

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// The variables that choose the servers, and what they default to.
const (
	RedisVar        = "HERALD_TEST_REDIS"
	NATSVar         = "HERALD_TEST_NATS"
	DefaultRedisURL = "redis://127.0.0.1:6379/0"
	DefaultNATSURL  = "nats://127.0.0.1:4222"
)

// Off is the value of RedisVar or NATSVar that skips the tests of that
// server even where one answers locally.
const Off = "off"

// probeTimeout bounds each probe: dialling plus the server's first answer.
// A local server answers in well under a millisecond; a port that swallows
// the connection must not hold up a test run for long.
const probeTimeout = 2 * time.Second

// RedisURL returns the URL of the Redis server t runs against, skips t
// when there is none (see the package documentation), or fails it when
// RedisVar names a server that does not answer.
func RedisURL(t testing.TB) string {
	t.Helper()
	return redis.url(t)
}

// NATSURL returns the URL of the NATS server (with JetStream, when it is
// found at the default address) t runs against, skips t when there is
// none, or fails it when NATSVar names a server that does not answer.
func NATSURL(t testing.TB) string {
	t.Helper()
	return nats.url(t)
}

// Required reports whether the variable name (RedisVar or NATSVar) names a
// server explicitly, so that a test which cannot reach or start that kind
// of server must fail instead of skipping.
func Required(name string) bool {
	v := strings.TrimSpace(os.Getenv(name))
	return v != "" && v != Off
}

// A server is one kind of server, resolved once per test binary: every test
// of a package gets the same answer, and the probe runs once.
type server struct {
	name, envVar, defaultURL string
	probe                    func(c net.Conn) error // checks the default address's answer

	once    sync.Once
	found   string // the URL to use, when the tests run
	skip    string // why they skip, when they do
	failure string // why they fail, when they do
}

var (
	redis = &server{name: "Redis", envVar: RedisVar, defaultURL: DefaultRedisURL, probe: probeRedis}
	nats  = &server{name: "NATS", envVar: NATSVar, defaultURL: DefaultNATSURL, probe: probeNATS}
)

func (s *server) url(t testing.TB) string {
	t.Helper()
	s.once.Do(s.resolve)
	switch {
	case s.failure != "":
		t.Fatal(s.failure)
	case s.skip != "":
		t.Skip(s.skip)
	}
	return s.found
}

func (s *server) resolve() {
	v := strings.TrimSpace(os.Getenv(s.envVar))
	switch v {
	case Off:
		s.skip = fmt.Sprintf("%s=%s: the %s tests are turned off", s.envVar, Off, s.name)
	case "":
		s.resolveDefault()
	default:
		s.resolveExplicit(v)
	}
}

// resolveDefault looks for the server at its usual address. Something else
// listening there (another program, a server that wants a password) is a
// reason to skip, said plainly, not to fail: the tests were not asked for.
func (s *server) resolveDefault() {
	addr := hostPort(s.defaultURL)
	c, err := net.DialTimeout("tcp", addr, probeTimeout)
	if err != nil {
		s.skip = fmt.Sprintf("no %s server answered at %s (%v): start one there, or set %s to a server's URL",
			s.name, addr, err, s.envVar)
		return
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(probeTimeout))
	if err := s.probe(c); err != nil {
		s.skip = fmt.Sprintf("%s at %s: %v; set %s to a server's URL to run the %s tests",
			s.name, addr, err, s.envVar, s.name)
		return
	}
	s.found = s.defaultURL
}

// resolveExplicit checks only that something accepts connections at the
// URL's address: the URL may carry credentials or TLS that the tests' own
// clients handle, and the tests report any deeper problem themselves.
func (s *server) resolveExplicit(v string) {
	// A NATS URL may list several servers; the first one must answer.
	first, _, _ := strings.Cut(v, ",")
	u, err := url.Parse(first)
	if err != nil || u.Host == "" {
		s.failure = fmt.Sprintf("%s=%q is not a URL such as %s (or %q to skip these tests)", s.envVar, v, s.defaultURL, Off)
		return
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), hostPortOf(s.defaultURL))
	}
	c, err := net.DialTimeout("tcp", addr, probeTimeout)
	if err != nil {
		s.failure = fmt.Sprintf("%s=%s names a %s server, but none answered at %s: %v",
			s.envVar, u.Redacted(), s.name, addr, err)
		return
	}
	c.Close()
	s.found = v
}

// probeRedis sends PING and wants +PONG.
func probeRedis(c net.Conn) error {
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return fmt.Errorf("failed to send PING: %w", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	switch line = strings.TrimSpace(line); {
	case err != nil && line == "":
		return fmt.Errorf("no answer to PING: %w", err)
	case line == "+PONG":
		return nil
	case strings.HasPrefix(line, "-NOAUTH"):
		return fmt.Errorf("the server wants a password (%s)", line)
	default:
		return fmt.Errorf("the answer to PING was %.60q, not +PONG: not a Redis server", line)
	}
}

// probeNATS reads the INFO line a NATS server sends first and wants
// JetStream on, which the NATS broker's tests need for history, presence
// and the webhooks' outbox.
func probeNATS(c net.Conn) error {
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("no INFO line: %w: not a NATS server", err)
	}
	rest, ok := strings.CutPrefix(line, "INFO ")
	if !ok {
		return fmt.Errorf("the first line was %.60q, not INFO: not a NATS server", strings.TrimSpace(line))
	}
	var info struct {
		JetStream    bool `json:"jetstream"`
		AuthRequired bool `json:"auth_required"`
	}
	if err := json.Unmarshal([]byte(rest), &info); err != nil {
		return fmt.Errorf("unreadable INFO: %w", err)
	}
	switch {
	case info.AuthRequired:
		return fmt.Errorf("the server wants credentials")
	case !info.JetStream:
		return fmt.Errorf("the server runs without JetStream (start nats-server with -js)")
	}
	return nil
}

func hostPort(u string) string {
	p, _ := url.Parse(u)
	return p.Host
}

func hostPortOf(u string) string {
	p, _ := url.Parse(u)
	return p.Port()
}
