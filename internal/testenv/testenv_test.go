package testenv

import (
	"bufio"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeServer listens on a loopback port and answers each connection with
// reply(first line read, or "" for servers that speak first). It returns
// the URL of the address, with scheme.
func fakeServer(t *testing.T, scheme string, speaksFirst bool, reply string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() { // owned: ends when Cleanup closes the listener
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if !speaksFirst {
				_, _ = bufio.NewReader(c).ReadString('\n')
			}
			_, _ = c.Write([]byte(reply))
			c.Close()
		}
	}()
	return scheme + "://" + ln.Addr().String()
}

// closedAddr returns a loopback address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func resolved(t *testing.T, s *server, env string) *server {
	t.Helper()
	t.Setenv(s.envVar, env)
	s.resolve()
	t.Logf("found=%q skip=%q failure=%q", s.found, s.skip, s.failure)
	return s
}

func TestDefaultAddress(t *testing.T) {
	for _, tc := range []struct {
		name, scheme string
		speaksFirst  bool
		reply        string
		probe        func(net.Conn) error
		skip         string // "" when the server is found
	}{
		{"redis", "redis", false, "+PONG\r\n", probeRedis, ""},
		{"redis wants a password", "redis", false, "-NOAUTH Authentication required.\r\n", probeRedis, "wants a password"},
		{"not redis", "redis", false, "HTTP/1.1 400 Bad Request\r\n", probeRedis, "not a Redis server"},
		{"redis silent", "redis", false, "", probeRedis, "no answer to PING"},
		{"nats", "nats", true, `INFO {"version":"2.9","jetstream":true}` + "\r\n", probeNATS, ""},
		{"nats without jetstream", "nats", true, `INFO {"version":"2.9"}` + "\r\n", probeNATS, "without JetStream"},
		{"nats wants credentials", "nats", true, `INFO {"jetstream":true,"auth_required":true}` + "\r\n", probeNATS, "wants credentials"},
		{"not nats", "nats", true, "SSH-2.0-OpenSSH_9.2\r\n", probeNATS, "not a NATS server"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := fakeServer(t, tc.scheme, tc.speaksFirst, tc.reply)
			s := resolved(t, &server{name: "X", envVar: "HERALD_TEST_X", defaultURL: u, probe: tc.probe}, "")
			if tc.skip == "" {
				if s.found != u || s.skip != "" || s.failure != "" {
					t.Fatalf("want %s found", u)
				}
				return
			}
			if s.found != "" || s.failure != "" || !strings.Contains(s.skip, tc.skip) {
				t.Fatalf("want a skip saying %q", tc.skip)
			}
		})
	}
}

func TestNothingAtDefaultAddressSkips(t *testing.T) {
	addr := closedAddr(t)
	s := resolved(t, &server{name: "Redis", envVar: "HERALD_TEST_X", defaultURL: "redis://" + addr, probe: probeRedis}, "")
	if s.found != "" || s.failure != "" || !strings.Contains(s.skip, "no Redis server answered at "+addr) {
		t.Fatal("want a skip naming the address")
	}
}

func TestOffSkipsEvenWhenAServerAnswers(t *testing.T) {
	u := fakeServer(t, "redis", false, "+PONG\r\n")
	s := resolved(t, &server{name: "Redis", envVar: "HERALD_TEST_X", defaultURL: u, probe: probeRedis}, "off")
	if s.found != "" || s.failure != "" || !strings.Contains(s.skip, "HERALD_TEST_X=off") {
		t.Fatal("want a skip naming the variable")
	}
}

func TestExplicitURL(t *testing.T) {
	dflt := closedAddr(t) // the default must not matter once the variable is set
	newServer := func() *server {
		return &server{name: "NATS", envVar: "HERALD_TEST_X", defaultURL: "nats://" + dflt, probe: probeNATS}
	}
	t.Run("answers", func(t *testing.T) {
		// Only a connection is asked of an explicit server: this one does not even speak NATS.
		u := fakeServer(t, "nats", true, "")
		list := u + ",nats://" + closedAddr(t)
		if s := resolved(t, newServer(), list); s.found != list || s.skip != "" || s.failure != "" {
			t.Fatal("want the variable's value used as it is")
		}
	})
	t.Run("does not answer", func(t *testing.T) {
		addr := closedAddr(t)
		s := resolved(t, newServer(), "nats://user:secret@"+addr)
		if s.found != "" || s.skip != "" || !strings.Contains(s.failure, "none answered at "+addr) {
			t.Fatal("want a failure naming the address")
		}
		if strings.Contains(s.failure, "secret") {
			t.Fatal("the failure shows the password")
		}
	})
	t.Run("not a URL", func(t *testing.T) {
		s := resolved(t, newServer(), "127.0.0.1:4222")
		if s.found != "" || s.skip != "" || !strings.Contains(s.failure, "is not a URL") {
			t.Fatal("want a failure saying it is not a URL")
		}
	})
	t.Run("no port", func(t *testing.T) {
		// The default URL's port is used: here, the closed one.
		s := resolved(t, newServer(), "nats://127.0.0.1")
		if !strings.Contains(s.failure, "none answered at "+dflt) {
			t.Fatal("want the default port tried")
		}
	})
}

func TestRequired(t *testing.T) {
	for env, want := range map[string]bool{"": false, "off": false, " ": false, "redis://127.0.0.1:6379/0": true} {
		t.Setenv("HERALD_TEST_X", env)
		if got := Required("HERALD_TEST_X"); got != want {
			t.Errorf("Required with %q = %v, want %v", env, got, want)
		}
	}
}
