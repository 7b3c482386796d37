package pusherapi

import (
	"errors"
	"net/url"
	"strconv"
	"testing"
	"time"
)

// The worked example of Pusher's HTTP API reference ("Generating
// authentication signatures"): app 3, its key and secret, and the body,
// body_md5 and auth_signature it gives.
const (
	docKey       = "278d425bdf160c739803"
	docSecret    = "7ad3773142a6692b25b8"
	docBody      = `{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}`
	docMD5       = "ec365a775a4cd0599faeb73354201b6f"
	docTimestamp = 1353088179
	docSignature = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
)

func docQuery() url.Values {
	return url.Values{
		"auth_key":       {docKey},
		"auth_timestamp": {strconv.Itoa(docTimestamp)},
		"auth_version":   {"1.0"},
		"body_md5":       {docMD5},
		"auth_signature": {docSignature},
	}
}

func TestVerifyRequestPusherDocExample(t *testing.T) {
	now := time.Unix(docTimestamp+30, 0)
	if err := VerifyRequest("POST", "/apps/3/events", docQuery(), []byte(docBody), docSecret, now, 0); err != nil {
		t.Fatalf("the documented request: %v", err)
	}
	want := "POST\n/apps/3/events\nauth_key=" + docKey + "&auth_timestamp=1353088179&auth_version=1.0&body_md5=" + docMD5
	if got := StringToSign("post", "/apps/3/events", docQuery()); got != want {
		t.Fatalf("StringToSign:\n%q\nwant\n%q", got, want)
	}
	q := url.Values{}
	SignQuery("POST", "/apps/3/events", q, []byte(docBody), docKey, docSecret, time.Unix(docTimestamp, 0))
	if q.Get("auth_signature") != docSignature || q.Get("body_md5") != docMD5 {
		t.Fatalf("SignQuery: %v", q)
	}
}

func TestVerifyRequestRefusesTampering(t *testing.T) {
	now := time.Unix(docTimestamp, 0)
	body := []byte(docBody)
	with := func(k, v string) url.Values {
		q := docQuery()
		q.Set(k, v)
		return q
	}
	cases := []struct {
		name         string
		method, path string
		query        url.Values
		body         []byte
		secret       string
		now          time.Time
		want         error
	}{
		{"wrong secret", "POST", "/apps/3/events", docQuery(), body, "another-secret", now, ErrBadSignature},
		{"other method", "GET", "/apps/3/events", docQuery(), body, docSecret, now, ErrBadSignature},
		{"other path", "POST", "/apps/4/events", docQuery(), body, docSecret, now, ErrBadSignature},
		{"tampered body", "POST", "/apps/3/events", docQuery(), []byte(`{"name":"bar","channels":["project-3"],"data":"{}"}`), docSecret, now, ErrBodyMD5},
		{"body without body_md5", "POST", "/apps/3/events", func() url.Values { q := docQuery(); q.Del("body_md5"); return q }(), body, docSecret, now, ErrBadSignature},
		{"added parameter", "POST", "/apps/3/events", with("info", "subscription_count"), body, docSecret, now, ErrBadSignature},
		{"changed timestamp", "POST", "/apps/3/events", with("auth_timestamp", "1353088180"), body, docSecret, now, ErrBadSignature},
		{"bad hex signature", "POST", "/apps/3/events", with("auth_signature", "zz"), body, docSecret, now, ErrBadSignature},
		{"missing key", "POST", "/apps/3/events", func() url.Values { q := docQuery(); q.Del("auth_key"); return q }(), body, docSecret, now, ErrMissingAuth},
		{"missing signature", "POST", "/apps/3/events", func() url.Values { q := docQuery(); q.Del("auth_signature"); return q }(), body, docSecret, now, ErrMissingAuth},
		{"too old", "POST", "/apps/3/events", docQuery(), body, docSecret, now.Add(601 * time.Second), ErrTimestamp},
		{"from the future", "POST", "/apps/3/events", docQuery(), body, docSecret, now.Add(-601 * time.Second), ErrTimestamp},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			err := VerifyRequest(c.method, c.path, c.query, c.body, c.secret, c.now, 0)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

func TestVerifyRequestEdges(t *testing.T) {
	t.Parallel()
	now := time.Now()
	// A GET with parameters of its own, signed as the SDK signs them
	// (values as written, not URL-encoded).
	q := url.Values{"filter_by_prefix": {"presence-"}, "info": {"user_count"}}
	SignQuery("GET", "/apps/1/channels", q, nil, "k", "s", now)
	if err := VerifyRequest("GET", "/apps/1/channels", q, nil, "s", now, 0); err != nil {
		t.Fatalf("GET: %v", err)
	}
	// Within a custom skew, and out of it.
	old := url.Values{}
	SignQuery("POST", "/apps/1/events", old, []byte("{}"), "k", "s", now.Add(-20*time.Second))
	if err := VerifyRequest("POST", "/apps/1/events", old, []byte("{}"), "s", now, 30*time.Second); err != nil {
		t.Fatalf("within skew: %v", err)
	}
	if err := VerifyRequest("POST", "/apps/1/events", old, []byte("{}"), "s", now, 10*time.Second); !errors.Is(err, ErrTimestamp) {
		t.Fatalf("out of skew: %v", err)
	}
	// auth_version other than 1.0, signed all the same.
	v2 := url.Values{"auth_key": {"k"}, "auth_timestamp": {strconv.FormatInt(now.Unix(), 10)}, "auth_version": {"2.0"}}
	v2.Set("auth_signature", Sign("s", StringToSign("GET", "/apps/1/channels", v2)))
	if err := VerifyRequest("GET", "/apps/1/channels", v2, nil, "s", now, 0); !errors.Is(err, ErrAuthVersion) {
		t.Fatalf("auth_version 2.0: %v", err)
	}
}

func TestVerifyWebhook(t *testing.T) {
	t.Parallel()
	body := []byte(`{"time_ms":1,"events":[{"name":"channel_occupied","channel":"a"}]}`)
	sig := Sign("s3cret", string(body))
	if !VerifyWebhook("s3cret", sig, body) {
		t.Fatal("a good signature refused")
	}
	if VerifyWebhook("other", sig, body) || VerifyWebhook("s3cret", sig, append(body, ' ')) || VerifyWebhook("s3cret", "xyz", body) {
		t.Fatal("a bad signature accepted")
	}
}
