// Package dashtest is a browser stand-in for the tests of the admin
// dashboard: package dashboard's own, and herald serve's, which mounts it.
// It logs in, keeps the session cookie and sends the headers a page of the
// server would. It imports nothing of the server.
package dashtest

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// SessionCookie is the name of the dashboard's session cookie.
const SessionCookie = "herald_admin"

// Browser is one browser: its session, once logged in, and the CSRF token
// the page reads from /admin/api/session.
type Browser struct {
	T     testing.TB
	Base  string // the server, http://host:port
	Token string // the session cookie's value; "" before a login
	CSRF  string
}

// Do sends a request with hdr and the session cookie, follows no redirect
// and keeps no connection alive (so that none outlives the test), and
// returns the response with its body read.
func (b *Browser) Do(method, path string, hdr http.Header, body string) (*http.Response, string) {
	b.T.Helper()
	req, err := http.NewRequest(method, b.Base+path, strings.NewReader(body))
	if err != nil {
		b.T.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if b.Token != "" {
		req.Header.Set("Cookie", SessionCookie+"="+b.Token)
	}
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		b.T.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		b.T.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, string(got)
}

// Login posts the login form as the login page does, and keeps the
// session cookie it gets, if any.
func (b *Browser) Login(password string) *http.Response {
	b.T.Helper()
	resp, _ := b.Do("POST", "/admin/login", http.Header{
		"Content-Type": {"application/x-www-form-urlencoded"},
		"Origin":       {b.Base},
	}, url.Values{"password": {password}}.Encode())
	for _, ck := range resp.Cookies() {
		if ck.Name == SessionCookie {
			b.Token = ck.Value
		}
	}
	return resp
}

// Post sends a request that changes something as the dashboard's page
// does: same origin, with the CSRF token.
func (b *Browser) Post(path, body string) (*http.Response, string) {
	b.T.Helper()
	return b.Do("POST", path, http.Header{"Origin": {b.Base}, "X-CSRF-Token": {b.CSRF}, "Content-Type": {"application/json"}}, body)
}

// GetJSON gets path and, if the status is 200, decodes the body into v. It
// returns the status.
func (b *Browser) GetJSON(path string, v any) int {
	b.T.Helper()
	resp, body := b.Do("GET", path, nil, "")
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal([]byte(body), v); err != nil {
			b.T.Fatalf("GET %s: %v: %s", path, err, body)
		}
	}
	return resp.StatusCode
}
