package herald

import (
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
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

// ErrInvalidToken is what every refused token's error matches (errors.Is):
// a *TokenError from the node and JWTVerifier.
var ErrInvalidToken = errors.New("herald: invalid token")

// TokenError is a refused token. Reason says why in words that are safe to
// show the client: it never quotes the token or a key.
type TokenError struct {
	Reason string
}

func (e *TokenError) Error() string { return "herald: invalid token: " + e.Reason }

// Is makes a TokenError match ErrInvalidToken.
func (e *TokenError) Is(target error) bool { return target == ErrInvalidToken }

func tokenErrorf(format string, args ...any) *TokenError {
	return &TokenError{Reason: fmt.Sprintf(format, args...)}
}

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
			return nil, fmt.Errorf("herald: failed to load JWKS from %s: %w", redactedURL(cfg.JWKSURL), err)
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
		return nil, &TokenError{Reason: tokenErrText(err)}
	}
	if err := numericDates(v.parser, token); err != nil {
		return nil, err
	}
	out := &Claims{UserID: c.Subject, Info: c.Info, Channels: c.Channels, Channel: c.Channel}
	if c.ExpiresAt != nil {
		out.ExpiresAt = c.ExpiresAt.Time
	}
	if len(out.Info) > 0 && !json.Valid(out.Info) {
		return nil, tokenErrorf("info is not JSON")
	}
	return out, nil
}

// numericDates refuses a token whose exp, nbf or iat is not a JSON number.
// RFC 7519 defines them as numbers (NumericDate); golang-jwt also takes a
// string holding one, which the issuer did not mean and other verifiers
// refuse, so Herald refuses it too. The token's signature is already
// verified: this only reads its payload again.
func numericDates(p *jwt.Parser, token string) error {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return tokenErrorf("token malformed")
	}
	payload, err := p.DecodeSegment(parts[1])
	if err != nil {
		return tokenErrorf("token malformed")
	}
	var claims map[string]json.RawMessage
	if err := json.Unmarshal(payload, &claims); err != nil {
		return tokenErrorf("token malformed")
	}
	for _, name := range []string{"exp", "nbf", "iat"} {
		if v, ok := claims[name]; ok && len(v) > 0 && v[0] != '-' && (v[0] < '0' || v[0] > '9') {
			return tokenErrorf("%s must be a number of seconds (RFC 7519 NumericDate)", name)
		}
	}
	return nil
}

// redactedURL is u with any password in it replaced by "xxxxx", for
// errors and logs.
func redactedURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(a URL that does not parse)"
	}
	return p.Redacted()
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

// maxTokenLen bounds a token the node verifies. Real tokens are well under
// 2 KiB (a large RS256 token with info and a few dozen channels); a larger
// one is refused unread, so that no client makes the node decode megabytes.
const maxTokenLen = 16 << 10

// tokenUse is what a client presents a token for.
type tokenUse uint8

const (
	// forConnection: the handshake's Authorization header, raw mode's token
	// query parameter, and the connect and refresh commands.
	forConnection tokenUse = iota
	// forSubscription: the token of a subscribe command.
	forSubscription
)

// tokenCheck says what a presented token must be.
type tokenCheck struct {
	use tokenUse
	// user is the user the connection already has; unless anyUser is set
	// the token must be for that user.
	user    string
	anyUser bool
	// channel is the channel a subscription token must grant.
	channel string
	// via names the transport in the log: "header", "query", "connect",
	// "refresh" or "subscribe".
	via    string
	client string // the connection, once there is one
	remote string // the client's address, at the handshake
}

// verifyToken is the one path every token a client presents goes through,
// whatever carried it, so that the transports cannot drift apart: it
// verifies the token (Config.Tokens), then that it is the kind the use
// needs — a subscription token (one with a channel claim) never
// authenticates a connection, and a connection token never stands in for
// a subscription token — for the right user and channel, with a user id
// Herald can route (see validUserID). A refusal is counted in
// herald_auth_failures_total, logged without the token, and returned as a
// *TokenError whose reason is safe to show the client. Connection tokens
// are logged at Info (a refusal ends the connection, so a flood of them is
// paced by the connection limits); subscription tokens at Debug, like
// every refusal that leaves the connection open.
func (n *Node) verifyToken(ctx context.Context, token string, chk tokenCheck) (*Claims, error) {
	claims, err := n.checkToken(ctx, token, chk)
	if err != nil {
		n.metrics.authFailures.Add(1)
		level := slog.LevelInfo
		if chk.use == forSubscription {
			level = slog.LevelDebug
		}
		attrs := []any{"via", chk.via}
		if chk.client != "" {
			attrs = append(attrs, "client", chk.client)
		}
		if chk.remote != "" {
			attrs = append(attrs, "remote", chk.remote)
		}
		n.log.Log(ctx, level, "token refused", append(attrs, "err", err)...)
		return nil, err
	}
	return claims, nil
}

func (n *Node) checkToken(ctx context.Context, token string, chk tokenCheck) (*Claims, error) {
	if len(token) > maxTokenLen {
		return nil, tokenErrorf("token longer than %d bytes", maxTokenLen)
	}
	claims, err := n.cfg.Tokens.Verify(ctx, token)
	if err != nil {
		var te *TokenError
		if errors.As(err, &te) {
			return nil, te
		}
		return nil, &TokenError{Reason: err.Error()} // a custom verifier's own words
	}
	switch {
	case chk.use == forConnection && claims.Channel != "":
		return nil, tokenErrorf("a subscription token cannot authenticate a connection")
	case chk.use == forSubscription && claims.Channel == "":
		return nil, tokenErrorf("a connection token is not a subscription token (it has no channel claim)")
	case chk.use == forSubscription && claims.Channel != chk.channel:
		return nil, tokenErrorf("subscription token is for another channel")
	case !chk.anyUser && claims.UserID != chk.user:
		return nil, tokenErrorf("token is for another user")
	}
	if err := validUserID(claims.UserID); err != nil {
		return nil, &TokenError{Reason: err.Error()}
	}
	return claims, nil
}

// validUserID refuses the user ids Herald cannot route: one with a ',' can
// never be named in a user-limited channel ("dm:#alice,bob" lists users
// separated by commas), so it is refused when it connects rather than
// silently locked out of every such channel later.
func validUserID(user string) error {
	if strings.ContainsRune(user, ',') {
		return errors.New("user id contains ',', which user-limited channels use to separate users")
	}
	return nil
}

// tokenRefusal is what the client is told of a refused token.
func tokenRefusal(err error) string {
	var te *TokenError
	if errors.As(err, &te) {
		return "invalid token: " + te.Reason
	}
	return "invalid token"
}

// bearerToken returns the token of an "Authorization: Bearer" header value.
func bearerToken(h string) string {
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}
