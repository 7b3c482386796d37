// Package benchjwt mints and checks the HS256 connection tokens of the
// churn scenario, for the generator and the baselines: the same claims
// Herald reads (sub, exp), so every server under test does the same work
// per connection — verify an HMAC signature and read the user.
package benchjwt

import (
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// MinSecret is the shortest secret accepted (Herald's own minimum).
const MinSecret = 32

// Mint returns an HS256 token for user that expires after ttl.
func Mint(secret []byte, user string, ttl time.Duration) (string, error) {
	if len(secret) < MinSecret {
		return "", fmt.Errorf("failed to mint a token: the secret has %d bytes, want at least %d", len(secret), MinSecret)
	}
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Subject:   user,
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(ttl)),
	})
	return t.SignedString(secret)
}

// ErrNoUser is returned for a valid token without a subject.
var ErrNoUser = errors.New("token has no sub")

// Verify checks token's HS256 signature and expiry and returns its user.
func Verify(secret []byte, token string) (string, error) {
	var claims jwt.RegisteredClaims
	_, err := jwt.ParseWithClaims(token, &claims, func(*jwt.Token) (any, error) { return secret, nil },
		jwt.WithValidMethods([]string{"HS256"}), jwt.WithExpirationRequired())
	if err != nil {
		return "", fmt.Errorf("failed to verify the token: %w", err)
	}
	if claims.Subject == "" {
		return "", ErrNoUser
	}
	return claims.Subject, nil
}
