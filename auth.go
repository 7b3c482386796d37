package herald

import (
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
)

// TokenVerifier verifies the tokens clients present: connection tokens (in
// the protocol's connect command, an Authorization: Bearer header, or raw
// mode's token query parameter) and subscription tokens (in subscribe).
// Setting Config.Tokens turns authentication on. JWTVerifier is the
// implementation; Verify must be safe for concurrent use.
type TokenVerifier interface {
	Verify(ctx context.Context, token string) (*Claims, error)
}

// Claims is what a verified token says.
type Claims struct {
	// UserID is the token's subject ("sub"); empty means anonymous.
	UserID string
	// ExpiresAt is the token's expiry ("exp"); zero means none.
	ExpiresAt time.Time
	// Info is public information about the user ("info"), shown in presence.
	Info json.RawMessage
	// Channels lists channels the token grants ("channels"): it satisfies
	// the "granted" permission for each of them.
	Channels []string
	// Channel, in a subscription token, is the one channel it grants
	// ("channel"); a connection token has none.
	Channel string
}

// ErrInvalidToken wraps every reason a token is refused.
var ErrInvalidToken = errors.New("herald: invalid token")

// JWTConfig holds the keys that verify JSON Web Tokens. Set one or more;
// each key accepts only its own algorithms, so a token signed with HS256
// cannot pass as an RSA one ("alg confusion") and "alg": "none" never passes.
type JWTConfig struct {
	// HMACSecret verifies HS256, HS384 and HS512.
	HMACSecret []byte
	// RSAPublicKey verifies RS256 (jwt.ParseRSAPublicKeyFromPEM reads PEM).
	RSAPublicKey *rsa.PublicKey
	// ECDSAPublicKey verifies ES256 (jwt.ParseECPublicKeyFromPEM reads PEM).
	ECDSAPublicKey *ecdsa.PublicKey
	// JWKSURL is a JSON Web Key Set to fetch RS256 and ES256 keys from, by
	// the token's "kid". It is cached and refreshed every JWKSRefresh (zero
	// means 1 hour), and refetched when a token names an unknown kid.
	JWKSURL     string
	JWKSRefresh time.Duration
	// Issuer and Audience, when set, must match the token's "iss" and "aud".
	Issuer   string
	Audience string
	// Leeway tolerates clock skew on "exp" and "nbf". Zero means 5s.
	Leeway time.Duration
	// Logger receives JWKS refresh errors. Nil logs nothing.
	Logger *slog.Logger
}

// JWTVerifier is a TokenVerifier for JSON Web Tokens (github.com/golang-jwt/jwt/v5).
type JWTVerifier struct {
	cfg    JWTConfig
	parser *jwt.Parser
	jwks   keyfunc.Keyfunc
}

var _ TokenVerifier = (*JWTVerifier)(nil)

// NewJWTVerifier returns a verifier for cfg. With a JWKS URL it fetches the
// key set now and keeps refreshing it in a goroutine until ctx is done.
func NewJWTVerifier(ctx context.Context, cfg JWTConfig) (*JWTVerifier, error) {
	var methods []string
	if len(cfg.HMACSecret) > 0 {
		methods = append(methods, "HS256", "HS384", "HS512")
	}
	if cfg.RSAPublicKey != nil || cfg.JWKSURL != "" {
		methods = append(methods, "RS256")
	}
	if cfg.ECDSAPublicKey != nil || cfg.JWKSURL != "" {
		methods = append(methods, "ES256")
	}
	if len(methods) == 0 {
		return nil, errors.New("herald: JWTConfig has no key: set HMACSecret, RSAPublicKey, ECDSAPublicKey or JWKSURL")
	}
	if cfg.Leeway <= 0 {
		cfg.Leeway = 5 * time.Second
	}
	opts := []jwt.ParserOption{jwt.WithValidMethods(methods), jwt.WithLeeway(cfg.Leeway)}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v := &JWTVerifier{cfg: cfg, parser: jwt.NewParser(opts...)}
	if cfg.JWKSURL != "" {
		refresh := cfg.JWKSRefresh
		if refresh <= 0 {
			refresh = time.Hour
		}
		log := cfg.Logger
		if log == nil {
			log = slog.New(slog.DiscardHandler)
		}
		k, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{cfg.JWKSURL}, keyfunc.Override{
			RefreshInterval: refresh,
			RefreshErrorHandlerFunc: func(u string) func(context.Context, error) {
				return func(_ context.Context, err error) { log.Warn("JWKS refresh failed", "url", u, "err", err) }
			},
		})
		if err != nil {
			return nil, fmt.Errorf("herald: failed to load JWKS from %s: %w", cfg.JWKSURL, err)
		}
		v.jwks = k
	}
	return v, nil
}

type jwtClaims struct {
	jwt.RegisteredClaims
	Info     json.RawMessage `json:"info,omitempty"`
	Channels []string        `json:"channels,omitempty"`
	Channel  string          `json:"channel,omitempty"`
}

// Verify implements TokenVerifier.
func (v *JWTVerifier) Verify(ctx context.Context, token string) (*Claims, error) {
	var c jwtClaims
	_, err := v.parser.ParseWithClaims(token, &c, func(t *jwt.Token) (any, error) {
		switch t.Method.(type) {
		case *jwt.SigningMethodHMAC:
			return v.cfg.HMACSecret, nil
		case *jwt.SigningMethodRSA:
			if v.cfg.RSAPublicKey != nil && (v.jwks == nil || t.Header["kid"] == nil) {
				return v.cfg.RSAPublicKey, nil
			}
		case *jwt.SigningMethodECDSA:
			if v.cfg.ECDSAPublicKey != nil && (v.jwks == nil || t.Header["kid"] == nil) {
				return v.cfg.ECDSAPublicKey, nil
			}
		}
		if v.jwks != nil {
			return v.jwks.KeyfuncCtx(ctx)(t)
		}
		return nil, fmt.Errorf("no key for %s", t.Method.Alg())
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalidToken, tokenErrText(err))
	}
	out := &Claims{UserID: c.Subject, Info: c.Info, Channels: c.Channels, Channel: c.Channel}
	if c.ExpiresAt != nil {
		out.ExpiresAt = c.ExpiresAt.Time
	}
	if len(out.Info) > 0 && !json.Valid(out.Info) {
		return nil, fmt.Errorf("%w: info is not JSON", ErrInvalidToken)
	}
	return out, nil
}

// tokenErrText says why a token failed without echoing the token.
func tokenErrText(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return "token expired"
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "token malformed"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "signature invalid"
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return "token unverifiable (algorithm not accepted or no key)"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "token not valid yet"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer), errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "wrong issuer or audience"
	}
	return "token invalid"
}

// bearerToken returns the token of an "Authorization: Bearer" header value.
func bearerToken(h string) string {
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}
