package main

import (
	"context"
	"crypto/elliptic"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"

	"github.com/golang-jwt/jwt/v5"

	"github.com/heraldhq/herald"
)

// openModeWarning is logged at start when no key is configured. It says
// what "open" means, and how to close it.
const openModeWarning = "AUTHENTICATION IS OFF: anyone who can reach this server may connect, subscribe and publish on every channel, " +
	"on the protocol endpoint (/ws), the raw endpoint (/ws/raw) and the SSE endpoint (/sse) alike. " +
	"To turn token authentication on, set jwt_secret_file (or jwt_secret, jwt_rsa_public_key, jwt_ecdsa_public_key, jwks_url) " +
	"and give your clients tokens; `herald token` mints one for development. See docs/security.md"

// minRSABits is the smallest RSA key accepted for RS256 (NIST SP 800-131A).
const minRSABits = 2048

// jwtConfig reads the key files named by the configuration and returns the
// verifier's configuration. ok is false when no key is configured.
func (c *Config) jwtConfig() (jc herald.JWTConfig, ok bool, err error) {
	if !c.authEnabled() {
		return jc, false, nil
	}
	jc = herald.JWTConfig{JWKSURL: c.JWKSURL, Issuer: c.JWTIssuer, Audience: c.JWTAudience}
	if c.JWTSecret != "" {
		jc.HMACSecret = []byte(c.JWTSecret)
	}
	if c.JWTSecretFile != "" {
		if jc.HMACSecret, err = readSecret(c.JWTSecretFile, checkHMACSecret); err != nil {
			return jc, false, fmt.Errorf("invalid jwt_secret_file %s: %w", c.JWTSecretFile, err)
		}
	}
	if c.JWTRSAPublicKey != "" {
		b, err := os.ReadFile(c.JWTRSAPublicKey)
		if err != nil {
			return jc, false, fmt.Errorf("failed to read jwt_rsa_public_key: %w", err)
		}
		k, err := jwt.ParseRSAPublicKeyFromPEM(b)
		if err != nil {
			return jc, false, fmt.Errorf("invalid jwt_rsa_public_key %s: want an RSA public key or certificate in PEM: %w", c.JWTRSAPublicKey, err)
		}
		if k.N.BitLen() < minRSABits {
			return jc, false, fmt.Errorf("invalid jwt_rsa_public_key %s: a %d-bit RSA key is too weak, use %d bits or more", c.JWTRSAPublicKey, k.N.BitLen(), minRSABits)
		}
		jc.RSAPublicKey = k
	}
	if c.JWTECDSAPublicKey != "" {
		b, err := os.ReadFile(c.JWTECDSAPublicKey)
		if err != nil {
			return jc, false, fmt.Errorf("failed to read jwt_ecdsa_public_key: %w", err)
		}
		k, err := jwt.ParseECPublicKeyFromPEM(b)
		if err != nil {
			return jc, false, fmt.Errorf("invalid jwt_ecdsa_public_key %s: want an ECDSA public key or certificate in PEM: %w", c.JWTECDSAPublicKey, err)
		}
		// Herald verifies ES256 only, whose key is on P-256: a key on
		// another curve would refuse every token, with a puzzling reason.
		if k.Curve != elliptic.P256() {
			return jc, false, fmt.Errorf("invalid jwt_ecdsa_public_key %s: the key is on %s, but ES256 needs P-256", c.JWTECDSAPublicKey, k.Curve.Params().Name)
		}
		jc.ECDSAPublicKey = k
	}
	return jc, true, nil
}

// readSecret reads a secret from a file, without the trailing newline that
// editors and `echo` add, and checks it.
func readSecret(path string, check func([]byte) error) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b = []byte(strings.TrimRight(string(b), "\r\n"))
	if err := check(b); err != nil {
		return nil, err
	}
	return b, nil
}

// tokenVerifier builds the verifier the configuration asks for, or returns
// nil when authentication is off. With a JWKS URL it fetches the key set
// now and refreshes it until ctx ends.
func (c *Config) tokenVerifier(ctx context.Context, logger *slog.Logger) (herald.TokenVerifier, error) {
	jc, ok, err := c.jwtConfig()
	if err != nil || !ok {
		return nil, err
	}
	jc.Logger = logger
	v, err := herald.NewJWTVerifier(ctx, jc)
	if err != nil {
		return nil, fmt.Errorf("failed to set up token authentication: %w", err)
	}
	return v, nil
}

// logAuth says at start how clients are authenticated: loudly when they
// are not. It never logs the secret, only which kinds of key are set.
func logAuth(logger *slog.Logger, c *Config) {
	if !c.authEnabled() && c.Hooks.ConnectURL != "" {
		// The connect hook lets in whom the backend accepts: not open.
		logger.Info("token authentication off: the connect hook (hook_connect_url) decides who may connect")
		return
	}
	if !c.authEnabled() {
		logger.Warn(openModeWarning)
		warnNamespacePermissions(logger, c)
		return
	}
	var keys []string
	if c.JWTSecret != "" || c.JWTSecretFile != "" {
		keys = append(keys, "hmac")
	}
	if c.JWTRSAPublicKey != "" {
		keys = append(keys, "rsa")
	}
	if c.JWTECDSAPublicKey != "" {
		keys = append(keys, "ecdsa")
	}
	attrs := []any{"keys", strings.Join(keys, ",")}
	if c.JWKSURL != "" {
		attrs = append(attrs, "jwks_url", redactURL(c.JWKSURL))
	}
	if c.JWTIssuer != "" {
		attrs = append(attrs, "issuer", c.JWTIssuer)
	}
	if c.JWTAudience != "" {
		attrs = append(attrs, "audience", c.JWTAudience)
	}
	logger.Info("token authentication on", attrs...)
	if c.secretOnCommandLine {
		logger.Warn("jwt_secret was given as a flag: every user of this machine can read it in the process list; use HERALD_JWT_SECRET or jwt_secret_file instead")
	}
	if u, err := url.Parse(c.JWKSURL); err == nil && u.Scheme == "http" && !isLoopback(u.Hostname()) {
		logger.Warn("jwks_url is plain http: whoever sits on the network path can swap the keys and forge tokens; use https", "jwks_url", redactURL(c.JWKSURL))
	}
}

// warnNamespacePermissions warns, with token authentication off, of each
// namespace permission that no client can then pass (at start, and when a
// reload changes the namespaces).
func warnNamespacePermissions(logger *slog.Logger, c *Config) {
	for _, ns := range c.Namespaces {
		for _, p := range []struct {
			key  string
			perm herald.Permission
		}{
			{"allow_subscribe", ns.AllowSubscribe}, {"allow_publish", ns.AllowPublish},
			{"allow_presence", ns.AllowPresence}, {"allow_history", ns.AllowHistory},
		} {
			if p.perm == herald.PermAuthenticated || p.perm == herald.PermGranted {
				logger.Warn("namespace permission needs token authentication, which is off: no client qualifies",
					"namespace", ns.Name, p.key, string(p.perm))
			}
		}
	}
}

// redactURL hides a password in a URL's user info, replacing it with
// xxxxx as url.URL.Redacted does. A string that does not parse as a URL
// (127.0.0.1:8080, a port that is not a number) is shown all the same, so
// that an error can say what was given: whatever sits between "scheme://"
// (or the start) and the last '@', after the first ':', is taken for a
// password.
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		return u.Redacted()
	}
	scheme, rest := "", s
	if i := strings.Index(s, "://"); i >= 0 {
		scheme, rest = s[:i+3], s[i+3:]
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return s
	}
	user, _, hasPassword := strings.Cut(rest[:at], ":")
	if !hasPassword {
		return s
	}
	return scheme + user + ":xxxxx" + rest[at:]
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
