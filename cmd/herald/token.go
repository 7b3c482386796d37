package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/heraldhq/herald/protocol"
)

const tokenUsage = `Usage: herald token [flags]

Mints an HS256 token for development and prints it to standard output: a
connection token (for the connect command, an Authorization: Bearer header,
or raw mode's token query parameter), or with --channel a subscription
token (for subscribe). In production your backend mints tokens with its own
JWT library; docs/security.md lists the claims.

  --secret SECRET
        HMAC secret, the server's jwt_secret (at least 32 bytes)
        env HERALD_JWT_SECRET; a flag shows in ps, prefer the variable
  --secret-file FILE
        file holding the secret, the server's jwt_secret_file
        env HERALD_JWT_SECRET_FILE
  --user ID
        the user the token authenticates ("sub"); required
  --ttl DURATION
        lifetime of the token ("exp"), default 1h
  --info JSON
        public information about the user, shown in presence ("info")
  --channels LIST
        comma-separated channels the token grants ("channels"), for
        namespaces whose permission is granted (a channel whose name
        holds a comma cannot be listed here)
  --channel CHANNEL
        make a subscription token for this one channel ("channel")
  --issuer ISS
        "iss", for a server with jwt_issuer; env HERALD_JWT_ISSUER
  --audience AUD
        "aud", for a server with jwt_audience; env HERALD_JWT_AUDIENCE

Example:
  export HERALD_JWT_SECRET="$(openssl rand -base64 32)"
  herald serve &
  herald token --user alice --ttl 1h --info '{"name":"Alice"}'
`

// tokenClaims are the claims Herald reads (see herald.Claims).
type tokenClaims struct {
	jwt.RegisteredClaims
	Info     json.RawMessage `json:"info,omitempty"`
	Channels []string        `json:"channels,omitempty"`
	Channel  string          `json:"channel,omitempty"`
}

// mintToken runs `herald token`: flags beat the HERALD_ variables, as in
// serve, and the token goes to out, alone on its line.
func mintToken(args, env []string, out io.Writer) error {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	var (
		secretFlag = fs.String("secret", "", "")
		secretFile = fs.String("secret-file", "", "")
		user       = fs.String("user", "", "")
		ttl        = new(time.Hour)
		info       = fs.String("info", "", "")
		channels   = fs.String("channels", "", "")
		channel    = fs.String("channel", "", "")
		issuer     = fs.String("issuer", "", "")
		audience   = fs.String("audience", "", "")
	)
	// Parsed here rather than by the flag package, whose error says only
	// "parse error".
	fs.Func("ttl", "", func(v string) (err error) {
		if *ttl, err = time.ParseDuration(strings.TrimSpace(v)); err != nil {
			return errors.New("want a duration such as 30m, 1h or 24h")
		}
		return nil
	})
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			_, _ = io.WriteString(out, tokenUsage)
			return err
		}
		return fmt.Errorf("failed to parse token arguments: %w (see herald help token)", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("token takes no arguments, got %q (see herald help token)", fs.Args())
	}
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	vars := make(map[string]string)
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && v != "" {
			vars[k] = v
		}
	}
	// A flag beats its variable, as in serve.
	if !set["issuer"] {
		*issuer = vars["HERALD_JWT_ISSUER"]
	}
	if !set["audience"] {
		*audience = vars["HERALD_JWT_AUDIENCE"]
	}
	var key []byte
	var keyFile string
	switch {
	case set["secret"] && set["secret-file"]:
		return errors.New("--secret and --secret-file both given: give one")
	case set["secret"]:
		key = []byte(*secretFlag)
	case set["secret-file"]:
		keyFile = *secretFile
	case vars["HERALD_JWT_SECRET"] != "" && vars["HERALD_JWT_SECRET_FILE"] != "":
		return errors.New("HERALD_JWT_SECRET and HERALD_JWT_SECRET_FILE both set: set one")
	case vars["HERALD_JWT_SECRET"] != "":
		key = []byte(vars["HERALD_JWT_SECRET"])
	case vars["HERALD_JWT_SECRET_FILE"] != "":
		keyFile = vars["HERALD_JWT_SECRET_FILE"]
	default:
		return errors.New("no secret: give --secret-file, --secret, HERALD_JWT_SECRET_FILE or HERALD_JWT_SECRET (the server's jwt_secret)")
	}
	if keyFile != "" {
		var err error
		if key, err = readSecret(keyFile, checkHMACSecret); err != nil {
			return fmt.Errorf("invalid secret file %s: %w", keyFile, err)
		}
	} else if err := checkHMACSecret(key); err != nil {
		return fmt.Errorf("invalid secret: %w", err) // never echo the secret itself
	}

	if *user == "" {
		return errors.New("--user is required: the user id the token authenticates")
	}
	if *ttl <= 0 {
		return fmt.Errorf("invalid --ttl %s: must be positive", *ttl)
	}
	now := time.Now()
	c := tokenClaims{RegisteredClaims: jwt.RegisteredClaims{
		Subject:   *user,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(*ttl)),
		Issuer:    *issuer,
	}}
	if *audience != "" {
		c.Audience = jwt.ClaimStrings{*audience}
	}
	if *info != "" {
		if !json.Valid([]byte(*info)) {
			return fmt.Errorf("invalid --info %q: not JSON", *info)
		}
		c.Info = json.RawMessage(*info)
	}
	if *channels != "" && *channel != "" {
		return errors.New("--channels (a connection token's grants) and --channel (a subscription token) both given: a token is one or the other")
	}
	for ch := range strings.SplitSeq(*channels, ",") {
		if ch = strings.TrimSpace(ch); ch == "" {
			continue
		}
		if !protocol.ValidChannel(ch) {
			return fmt.Errorf("invalid channel %q in --channels: use 1-255 of A-Z a-z 0-9 _ - . : @ # , = / !", ch)
		}
		c.Channels = append(c.Channels, ch)
	}
	if *channel != "" {
		if !protocol.ValidChannel(*channel) {
			return fmt.Errorf("invalid --channel %q: use 1-255 of A-Z a-z 0-9 _ - . : @ # , = / !", *channel)
		}
		c.Channel = *channel
	}
	signed, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(key)
	if err != nil {
		return fmt.Errorf("failed to sign the token: %w", err)
	}
	_, err = fmt.Fprintln(out, signed)
	return err
}
