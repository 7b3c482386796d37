package httphooks

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// SignatureHeader is the header that carries a request's signature when
// Config.Secret is set:
//
//	Herald-Signature: t=1700000000,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd
//
// t is when the request was signed (unix seconds); v1 is the lowercase hex
// HMAC-SHA256, keyed with the secret, of t, a '.' and the body's bytes.
// Signing t with the body is what lets a receiver refuse a request
// replayed later (Verify's tolerance).
const SignatureHeader = "Herald-Signature"

// DefaultTolerance is the replay window Verify uses for a tolerance of 0.
const DefaultTolerance = 5 * time.Minute

// Errors of Verify.
var (
	// ErrNoSignature: the header is missing or has no t or v1.
	ErrNoSignature = errors.New("httphooks: no signature")
	// ErrBadSignature: no v1 matches the body and t (a wrong secret, or a
	// request changed on the way).
	ErrBadSignature = errors.New("httphooks: signature does not match")
	// ErrStaleSignature: t is further than the tolerance from now (a
	// replayed request, or clocks apart).
	ErrStaleSignature = errors.New("httphooks: signature timestamp outside the tolerance")
)

// Sign returns the Herald-Signature header value of body signed at t.
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(ts))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

// Verify checks header (a Herald-Signature value) against body: one of its
// v1 signatures must be the HMAC of its t and body under secret, and t
// must be within tolerance of now, either way (0 means DefaultTolerance).
// Several v1 entries are allowed (any one may match), so that a receiver
// stays compatible should a sender sign with two secrets while rotating.
// The comparison is constant-time. It returns nil, or ErrNoSignature,
// ErrBadSignature or ErrStaleSignature, wrapped.
//
// The signature is checked before the time, so that a stale error tells
// the truth only about requests that really came from the secret's holder.
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			continue
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			if b, err := hex.DecodeString(v); err == nil {
				sigs = append(sigs, b)
			}
		}
	}
	if ts == "" || len(sigs) == 0 {
		return fmt.Errorf("%w: want %s: t=<unix seconds>,v1=<hex HMAC-SHA256>", ErrNoSignature, SignatureHeader)
	}
	want := mac(secret, ts, body)
	ok := false
	for _, s := range sigs {
		// Every entry is compared, so that the time taken does not tell
		// which one matched.
		if hmac.Equal(s, want) {
			ok = true
		}
	}
	if !ok {
		return ErrBadSignature
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: t %q is not unix seconds", ErrNoSignature, ts)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: signed %s ago, tolerance %s", ErrStaleSignature, d.Round(time.Second), tolerance)
	}
	return nil
}

// MaxVerifyBody is the largest request body VerifyRequest reads.
const MaxVerifyBody = 16 << 20

// VerifyRequest reads r's body (at most MaxVerifyBody bytes) and checks
// its Herald-Signature against secret, within tolerance of the current
// time (0 means DefaultTolerance). It returns the body, for the handler to
// decode, only when the signature is good; r.Body is consumed either way.
// Answer a non-nil error with 401: Herald counts it as a failed call.
func VerifyRequest(r *http.Request, secret []byte, tolerance time.Duration) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxVerifyBody+1))
	if err != nil {
		return nil, fmt.Errorf("httphooks: failed to read the request body: %w", err)
	}
	if len(body) > MaxVerifyBody {
		return nil, fmt.Errorf("httphooks: request body over %d bytes", MaxVerifyBody)
	}
	if err := Verify(secret, r.Header.Get(SignatureHeader), body, time.Now(), tolerance); err != nil {
		return nil, err
	}
	return body, nil
}
