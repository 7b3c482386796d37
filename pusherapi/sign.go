package pusherapi

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// DefaultClockSkew is how far a request's auth_timestamp may be from the
// server's clock, either way, when Config.ClockSkew is zero: Pusher's own
// window (600 seconds).
const DefaultClockSkew = 600 * time.Second

// Errors of VerifyRequest. Each is answered 401, as Pusher answers them,
// with the message in the body.
var (
	// ErrMissingAuth: auth_key, auth_timestamp, auth_version or
	// auth_signature is missing.
	ErrMissingAuth = errors.New("pusherapi: missing authentication parameter")
	// ErrAuthVersion: auth_version is not 1.0.
	ErrAuthVersion = errors.New("pusherapi: unsupported auth_version")
	// ErrBodyMD5: body_md5 is missing for a body, or is not the body's MD5.
	ErrBodyMD5 = errors.New("pusherapi: body_md5 does not match the body")
	// ErrBadSignature: auth_signature is not the HMAC of the request under
	// the app's secret (a wrong secret, or a request changed on the way).
	ErrBadSignature = errors.New("pusherapi: invalid signature")
	// ErrTimestamp: auth_timestamp is not a number within the clock skew of
	// the server's time (a replayed request, or clocks apart).
	ErrTimestamp = errors.New("pusherapi: timestamp expired")
)

// StringToSign is what a request's auth_signature signs, as Pusher defines
// it and its server SDKs compute it: the method in capitals, the path
// (/apps/{app_id}/…) and the query without auth_signature, its keys in
// lower case and sorted, each key=value with the values as they were
// before URL encoding, joined by '&', the three joined by '\n'.
func StringToSign(method, path string, query url.Values) string {
	keys := make([]string, 0, len(query))
	lower := make(map[string]string, len(query))
	for k, v := range query {
		lk := strings.ToLower(k)
		if lk == "auth_signature" || len(v) == 0 {
			continue
		}
		keys = append(keys, lk)
		lower[lk] = v[0]
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(strings.ToUpper(method))
	b.WriteByte('\n')
	b.WriteString(path)
	b.WriteByte('\n')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(lower[k])
	}
	return b.String()
}

// Sign returns the hex HMAC-SHA256 of s under secret: a request's
// auth_signature (of StringToSign) and a webhook's X-Pusher-Signature (of
// its body) both are one.
func Sign(secret, s string) string {
	return hex.EncodeToString(hmacSHA256(secret, []byte(s)))
}

func hmacSHA256(secret string, b []byte) []byte {
	h := hmac.New(sha256.New, []byte(secret))
	h.Write(b)
	return h.Sum(nil)
}

// SignQuery adds to query the parameters that sign a request as the
// Pusher server SDKs do (auth_key, auth_timestamp, auth_version=1.0,
// body_md5 when body is not empty, auth_signature), for key and secret at
// time t. It is what a Go client of this API uses, and what the tests
// check VerifyRequest against.
func SignQuery(method, path string, query url.Values, body []byte, key, secret string, t time.Time) {
	query.Set("auth_key", key)
	query.Set("auth_timestamp", strconv.FormatInt(t.Unix(), 10))
	query.Set("auth_version", "1.0")
	if len(body) > 0 {
		query.Set("body_md5", bodyMD5(body))
	}
	query.Del("auth_signature")
	query.Set("auth_signature", Sign(secret, StringToSign(method, path, query)))
}

func bodyMD5(body []byte) string {
	sum := md5.Sum(body)
	return hex.EncodeToString(sum[:])
}

// VerifyRequest checks a request signed with secret: the signature over
// method, path and query (StringToSign), then body_md5 against body (for
// a non-empty body), then auth_version, then auth_timestamp within skew of
// now (0 means DefaultClockSkew). The signature is compared in constant
// time, and checked first, so that the errors after it tell the truth
// only to the secret's holder. auth_key is the caller's to match against
// the app before this call. It returns nil or one of the errors above,
// wrapped with what was wrong.
func VerifyRequest(method, path string, query url.Values, body []byte, secret string, now time.Time, skew time.Duration) error {
	for _, p := range []string{"auth_key", "auth_timestamp", "auth_version", "auth_signature"} {
		if query.Get(p) == "" {
			return fmt.Errorf("%w: %s", ErrMissingAuth, p)
		}
	}
	want := hmacSHA256(secret, []byte(StringToSign(method, path, query)))
	got, err := hex.DecodeString(query.Get("auth_signature"))
	if err != nil || !hmac.Equal(got, want) {
		return ErrBadSignature
	}
	if len(body) > 0 {
		if md := query.Get("body_md5"); md == "" || !hmac.Equal([]byte(strings.ToLower(md)), []byte(bodyMD5(body))) {
			return ErrBodyMD5
		}
	}
	if v := query.Get("auth_version"); v != "1.0" {
		return fmt.Errorf("%w %q: want 1.0", ErrAuthVersion, v)
	}
	if skew <= 0 {
		skew = DefaultClockSkew
	}
	ts, err := strconv.ParseInt(query.Get("auth_timestamp"), 10, 64)
	if err != nil {
		return fmt.Errorf("%w: auth_timestamp %q is not unix seconds", ErrTimestamp, query.Get("auth_timestamp"))
	}
	if d := now.Sub(time.Unix(ts, 0)); d > skew || d < -skew {
		return fmt.Errorf("%w: given timestamp (%d) not within %ds of server time (%d)", ErrTimestamp, ts, int(skew.Seconds()), now.Unix())
	}
	return nil
}

// Webhook headers: the app's key, and the hex HMAC-SHA256 of the body
// under the app's secret, as Pusher sends them and its SDKs'
// webhook(...).isValid() check them.
const (
	WebhookKeyHeader       = "X-Pusher-Key"
	WebhookSignatureHeader = "X-Pusher-Signature"
)

// VerifyWebhook reports whether signature (an X-Pusher-Signature value) is
// the HMAC of body under secret, in constant time: what a Go receiver of
// the webhooks checks.
func VerifyWebhook(secret, signature string, body []byte) bool {
	got, err := hex.DecodeString(signature)
	return err == nil && hmac.Equal(got, hmacSHA256(secret, body))
}
