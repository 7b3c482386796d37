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

// tokenArgs are the arguments of `herald token`, with the environment's
// values where no flag was given.
type tokenArgs struct {
	user, info, channels, channel string
	issuer, audience              string
	ttl                           time.Duration
	key                           []byte // the HMAC secret, checked
}

// mintToken runs `herald token`: flags beat the HERALD_ variables, as in
// serve, and the token goes to out, alone on its line.
func mintToken(args, env []string, out io.Writer) error {
	a, err := parseTokenArgs(args, envMap(env), out)
	if err != nil {
		return err
	}
	c, err := a.claims(time.Now())
	if err != nil {
		return err
	}
	signed, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(a.key)
	if err != nil {
		return fmt.Errorf("failed to sign the token: %w", err)
	}
	_, err = fmt.Fprintln(out, signed)
	return err
}

// parseTokenArgs parses the flags, applies the variables of vars that no
// flag overrides, and reads the secret; with -h it writes the usage to out
// and returns flag.ErrHelp.
func parseTokenArgs(args []string, vars map[string]string, out io.Writer) (*tokenArgs, error) {
	a := &tokenArgs{ttl: time.Hour}
	var secretFlag, secretFile string
	fs := newFlagSet("token", map[string]*string{"secret": &secretFlag, "secret-file": &secretFile, "user": &a.user,
		"info": &a.info, "channels": &a.channels, "channel": &a.channel, "issuer": &a.issuer, "audience": &a.audience})
	// Parsed here rather than by the flag package, whose error says only
	// "parse error".
	fs.Func("ttl", "", func(v string) (err error) {
		if a.ttl, err = time.ParseDuration(strings.TrimSpace(v)); err != nil {
			return errors.New("want a duration such as 30m, 1h or 24h")
		}
		return nil
	})
	if err := parseFlags(fs, args, out, tokenUsage); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("token takes no arguments, got %q (see herald help token)", fs.Args())
	}
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	// A flag beats its variable, as in serve.
	if !set["issuer"] {
		a.issuer = vars["HERALD_JWT_ISSUER"]
	}
	if !set["audience"] {
		a.audience = vars["HERALD_JWT_AUDIENCE"]
	}
	var err error
	a.key, err = tokenSecret(set, secretFlag, secretFile, vars)
	return a, err
}

// tokenSecret returns the HMAC secret, checked: from --secret or
// --secret-file (set says which were given), else from HERALD_JWT_SECRET
// or HERALD_JWT_SECRET_FILE.
func tokenSecret(set map[string]bool, secretFlag, secretFile string, vars map[string]string) ([]byte, error) {
	var key []byte
	var keyFile string
	switch {
	case set["secret"] && set["secret-file"]:
		return nil, errors.New("--secret and --secret-file both given: give one")
	case set["secret"]:
		key = []byte(secretFlag)
	case set["secret-file"]:
		keyFile = secretFile
	case vars["HERALD_JWT_SECRET"] != "" && vars["HERALD_JWT_SECRET_FILE"] != "":
		return nil, errors.New("HERALD_JWT_SECRET and HERALD_JWT_SECRET_FILE both set: set one")
	case vars["HERALD_JWT_SECRET"] != "":
		key = []byte(vars["HERALD_JWT_SECRET"])
	case vars["HERALD_JWT_SECRET_FILE"] != "":
		keyFile = vars["HERALD_JWT_SECRET_FILE"]
	default:
		return nil, errors.New("no secret: give --secret-file, --secret, HERALD_JWT_SECRET_FILE or HERALD_JWT_SECRET (the server's jwt_secret)")
	}
	if keyFile != "" {
		key, err := readSecret(keyFile, checkHMACSecret)
		if err != nil {
			return nil, fmt.Errorf("invalid secret file %s: %w", keyFile, err)
		}
		return key, nil
	}
	if err := checkHMACSecret(key); err != nil {
		return nil, fmt.Errorf("invalid secret: %w", err) // never echo the secret itself
	}
	return key, nil
}

// claims are the token's claims, issued at now.
func (a *tokenArgs) claims(now time.Time) (tokenClaims, error) {
	if a.user == "" {
		return tokenClaims{}, errors.New("--user is required: the user id the token authenticates")
	}
	if a.ttl <= 0 {
		return tokenClaims{}, fmt.Errorf("invalid --ttl %s: must be positive", a.ttl)
	}
	c := tokenClaims{RegisteredClaims: jwt.RegisteredClaims{
		Subject:   a.user,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(a.ttl)),
		Issuer:    a.issuer,
	}}
	if a.audience != "" {
		c.Audience = jwt.ClaimStrings{a.audience}
	}
	if a.info != "" {
		if !json.Valid([]byte(a.info)) {
			return c, fmt.Errorf("invalid --info %q: not JSON", a.info)
		}
		c.Info = json.RawMessage(a.info)
	}
	var err error
	c.Channels, c.Channel, err = a.grants()
	return c, err
}

const wantChannel = "use 1-255 of A-Z a-z 0-9 _ - . : @ # , = / !"

// grants are the channels the token grants (--channels), or the one
// channel of a subscription token (--channel).
func (a *tokenArgs) grants() (channels []string, channel string, err error) {
	if a.channels != "" && a.channel != "" {
		return nil, "", errors.New("--channels (a connection token's grants) and --channel (a subscription token) both given: a token is one or the other")
	}
	for ch := range strings.SplitSeq(a.channels, ",") {
		if ch = strings.TrimSpace(ch); ch == "" {
			continue
		}
		if !protocol.ValidChannel(ch) {
			return nil, "", fmt.Errorf("invalid channel %q in --channels: %s", ch, wantChannel)
		}
		channels = append(channels, ch)
	}
	if a.channel != "" && !protocol.ValidChannel(a.channel) {
		return nil, "", fmt.Errorf("invalid --channel %q: %s", a.channel, wantChannel)
	}
	return channels, a.channel, nil
}
