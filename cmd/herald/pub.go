package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

const pubUsage = `Usage: herald pub --channel CHANNEL [flags] JSON
       herald pub --channel CHANNEL --binary @FILE   (or --binary - for stdin)

Publishes to a channel through a Herald server's HTTP API (POST
/api/v1/publish), as the server: namespace permissions do not apply. The
server needs an API key (its api_key or api_key_file setting).

JSON is the payload, any JSON value: '{"text":"hi"}', '"plain text"', 42.
--binary publishes bytes instead, which subscribers get in a binary frame.

Prints where the publication landed: on a channel with history, its offset
and the channel's epoch. An HTTP error is reported with the API's error
code, message and field, and a non-zero exit status.

Flags:
  --channel CHANNEL         channel to publish to (required)
  --binary @FILE | -        publish the bytes of FILE, or of standard input
  --idempotency-key KEY     publish at most once per channel and key within
                            the server's window (2 minutes): a repeat prints
                            "duplicate" and the first publish's offset
  --url URL                 the server (env HERALD_URL, default http://127.0.0.1:8080)
  --api-key KEY             the API key (env HERALD_API_KEY); a flag shows in
                            ps: prefer the variable or --api-key-file
  --api-key-file FILE       file holding the API key (env HERALD_API_KEY_FILE)
  --timeout DURATION        bound on the request (default 10s)
  --json                    print the API's JSON response instead
`

const defaultPubURL = "http://127.0.0.1:8080"

// apiErrorBody is the API's error response: {"error":{"code","message","field"}}.
type apiErrorBody struct {
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Field   string `json:"field"`
	} `json:"error"`
}

// PubError is an error answer of the HTTP API.
type PubError struct {
	Status  int
	Code    string // the API's error code, e.g. "bad_channel"; "" if the body was not the API's
	Message string
	Field   string
}

func (e *PubError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "publish failed: HTTP %d %s", e.Status, http.StatusText(e.Status))
	if e.Code != "" {
		fmt.Fprintf(&b, ": %s", e.Code)
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", e.Message)
	}
	if e.Field != "" {
		fmt.Fprintf(&b, " (field %s)", e.Field)
	}
	switch {
	case e.Status == http.StatusUnauthorized:
		b.WriteString("; check --api-key or HERALD_API_KEY against the server's api_key")
	case e.Status == http.StatusNotFound && e.Code == "":
		b.WriteString("; is the HTTP API on? The server needs api_key (or api_key_file)")
	}
	return b.String()
}

// pubArgs are the arguments of `herald pub`, with the environment's
// defaults applied.
type pubArgs struct {
	channel, binary, idemKey string
	payload                  []string // the JSON argument, if given
	serverURL, urlFrom       string   // urlFrom: where serverURL came from, for its errors
	apiKey                   string
	apiKeyFile, keyFileFrom  string
	timeout                  time.Duration
	asJSON                   bool
}

// publish runs `herald pub`; stdin is read for --binary -.
func publish(ctx context.Context, args, env []string, stdin io.Reader, stdout io.Writer) error {
	p, err := parsePubArgs(args, stdout)
	if err != nil {
		return err
	}
	p.applyEnv(envMap(env))
	body, err := p.body(stdin)
	if err != nil {
		return err
	}
	key, err := p.key()
	if err != nil {
		return err
	}
	endpoint, err := apiEndpoint(p.serverURL, "/api/v1/publish")
	if err != nil {
		return fmt.Errorf("invalid %s %q: %w", p.urlFrom, redactURL(p.serverURL), err)
	}
	raw, err := postAPI(ctx, endpoint, key, body, p.timeout)
	if err != nil {
		return err
	}
	if p.asJSON {
		_, err := stdout.Write(raw)
		return err
	}
	return p.printResult(stdout, raw)
}

// parsePubArgs parses the flags and the payload argument; with -h it
// writes the usage to stdout and returns flag.ErrHelp.
func parsePubArgs(args []string, stdout io.Writer) (*pubArgs, error) {
	p := &pubArgs{timeout: 10 * time.Second}
	fs := newFlagSet("pub", map[string]*string{"channel": &p.channel, "binary": &p.binary, "idempotency-key": &p.idemKey,
		"url": &p.serverURL, "api-key": &p.apiKey, "api-key-file": &p.apiKeyFile})
	// --timeout and --json are parsed here rather than by the flag
	// package, whose errors say only "parse error".
	fs.Func("timeout", "", func(v string) (err error) {
		p.timeout, err = time.ParseDuration(strings.TrimSpace(v))
		if err != nil {
			return errors.New("want a duration such as 500ms, 10s or 1m")
		}
		return nil
	})
	fs.BoolFunc("json", "", func(v string) (err error) {
		p.asJSON, err = parseBool(v)
		return err
	})
	if err := parseFlags(fs, args, stdout, pubUsage); err != nil {
		return nil, err
	}
	if p.timeout <= 0 {
		return nil, fmt.Errorf("invalid --timeout %s: must be positive, such as 10s", p.timeout)
	}
	p.payload = fs.Args()
	return p, nil
}

// applyEnv fills in from the environment what no flag gave.
func (p *pubArgs) applyEnv(vars map[string]string) {
	p.urlFrom = "--url"
	if p.serverURL == "" {
		p.serverURL, p.urlFrom = vars["HERALD_URL"], "HERALD_URL"
	}
	if p.serverURL == "" {
		p.serverURL, p.urlFrom = defaultPubURL, "default URL"
	}
	p.keyFileFrom = "--api-key-file"
	if p.apiKeyFile == "" {
		p.apiKeyFile, p.keyFileFrom = vars["HERALD_API_KEY_FILE"], "HERALD_API_KEY_FILE"
	}
	if p.apiKey == "" && p.apiKeyFile == "" {
		p.apiKey = vars["HERALD_API_KEY"]
	}
}

// body is the publish request: the channel, the payload (JSON, or bytes
// from --binary) and the idempotency key.
func (p *pubArgs) body(stdin io.Reader) (map[string]any, error) {
	if p.channel == "" {
		return nil, errors.New("pub needs --channel (see herald help pub)")
	}
	body := map[string]any{"channel": p.channel}
	switch {
	case p.binary != "" && len(p.payload) > 0:
		return nil, errors.New("pub takes either a JSON argument or --binary, not both")
	case p.binary != "":
		data, err := readBinary(p.binary, stdin)
		if err != nil {
			return nil, err
		}
		body["data_base64"] = base64.StdEncoding.EncodeToString(data)
	case len(p.payload) == 1:
		data := []byte(p.payload[0])
		if !json.Valid(data) {
			return nil, fmt.Errorf(`the payload %q is not JSON; to publish text, quote it: '"hello"' (or use --binary for bytes)`, truncate(p.payload[0], 60))
		}
		body["data"] = json.RawMessage(data)
	case len(p.payload) == 0:
		return nil, errors.New("pub needs a payload: a JSON argument, or --binary @FILE (see herald help pub)")
	default:
		return nil, fmt.Errorf("pub takes one JSON argument, got %d (quote the JSON: '{\"text\":\"hi\"}')", len(p.payload))
	}
	if p.idemKey != "" {
		body["idempotency_key"] = p.idemKey
	}
	return body, nil
}

// key is the API key: --api-key-file's (or HERALD_API_KEY_FILE's) content,
// else --api-key or HERALD_API_KEY.
func (p *pubArgs) key() (string, error) {
	key := p.apiKey
	if p.apiKeyFile != "" {
		b, err := readSecret(p.apiKeyFile, func(b []byte) error {
			if len(b) == 0 {
				return errors.New("the file is empty: write the server's API key (its api_key) in it")
			}
			return nil
		})
		if err != nil {
			return "", fmt.Errorf("invalid %s %s: %w", p.keyFileFrom, p.apiKeyFile, err)
		}
		key = string(b)
	}
	if key == "" {
		return "", errors.New("pub needs the server's API key: set HERALD_API_KEY (or --api-key-file, --api-key)")
	}
	return key, nil
}

// printResult says where the publication landed, from the API's answer.
func (p *pubArgs) printResult(stdout io.Writer, raw []byte) error {
	var res struct {
		Offset    uint64 `json:"offset"`
		Epoch     string `json:"epoch"`
		Duplicate bool   `json:"duplicate"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		// Not the publish API's answer: json's error would only name Go types.
		return fmt.Errorf(`the server's answer %q is not the publish API's ({"offset":N,"epoch":"E"} or {}): is %s a Herald server?`,
			truncate(strings.TrimSpace(string(raw)), 200), p.urlFrom)
	}
	var err error
	switch {
	case res.Duplicate:
		_, err = fmt.Fprintf(stdout, "duplicate: already published to %s with this idempotency key: offset %d, epoch %s\n", p.channel, res.Offset, res.Epoch)
	case res.Offset != 0:
		_, err = fmt.Fprintf(stdout, "published to %s: offset %d, epoch %s\n", p.channel, res.Offset, res.Epoch)
	default:
		_, err = fmt.Fprintf(stdout, "published to %s (the channel keeps no history: no offset)\n", p.channel)
	}
	return err
}

// envMap maps the environment's variables that have a value (an empty one
// counts as unset, as in most deployment tools) to it.
func envMap(env []string) map[string]string {
	m := make(map[string]string)
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && v != "" {
			m[k] = v
		}
	}
	return m
}

// readBinary reads the --binary payload: "@FILE", or "-" (or "@-") for
// standard input.
func readBinary(arg string, stdin io.Reader) ([]byte, error) {
	if arg == "-" || arg == "@-" {
		b, err := io.ReadAll(stdin)
		if err != nil {
			return nil, fmt.Errorf("failed to read standard input: %w", err)
		}
		return b, nil
	}
	path, ok := strings.CutPrefix(arg, "@")
	if !ok {
		return nil, fmt.Errorf("--binary takes @FILE or - (standard input), got %q", arg)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("failed to read --binary file: %w", err)
	}
	return b, nil
}

// apiEndpoint joins the server's base URL and an API path. Its error says
// what a valid base is; the caller says what was given, and where.
func apiEndpoint(base, path string) (string, error) {
	base = strings.TrimSpace(base)
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", errors.New("want an http:// or https:// URL, such as " + defaultPubURL + schemeHint(base, "http"))
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	u.RawQuery, u.Fragment = "", ""
	return u.String(), nil
}

// postAPI posts body as JSON with the API key and returns the response body
// of a 2xx answer; any other answer is a *PubError.
func postAPI(ctx context.Context, endpoint, key string, body any, timeout time.Duration) ([]byte, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("failed to encode the request: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("failed to build the request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("User-Agent", "herald-pub")
	// One request: no connection is kept, so nothing outlives the call.
	tr := &http.Transport{DisableKeepAlives: true, TLSHandshakeTimeout: timeout}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("failed to reach the server: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("failed to read the server's answer: %w", err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return raw, nil
	}
	pe := &PubError{Status: resp.StatusCode}
	var eb apiErrorBody
	if json.Unmarshal(raw, &eb) == nil && eb.Error != nil {
		pe.Code, pe.Message, pe.Field = eb.Error.Code, eb.Error.Message, eb.Error.Field
	} else {
		pe.Message = strings.TrimSpace(truncate(string(raw), 200))
	}
	return nil, pe
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
