package herald

import (
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The WebSocket opening handshake (RFC 6455 section 4.2; permessage-deflate,
// RFC 7692), done here rather than by gorilla/websocket: Herald reads and
// writes the frames itself (internal/wsframe), so the handshake is all
// gorilla did, and learning what it had negotiated meant reading its
// response bytes back. Owning the hundred lines makes the negotiation a
// value (handshake) the connection is built from.

// handshake is a validated opening handshake, not yet answered.
type handshake struct {
	key         string // Sec-WebSocket-Key
	subprotocol string // the one selected, "" for none
	deflate     bool   // permessage-deflate accepted
	// deflateParams are the parameters of the accepted offer's answer.
	deflateParams string
}

// handshakeRefusal is a request that is not a handshake this node
// accepts: the HTTP status and the message it is answered with.
type handshakeRefusal struct {
	status int
	msg    string
}

// checkHandshake validates r as an opening handshake for one of
// subprotocols (the first the client offers that is among them is
// selected; a client that offers none is served without). It checks the
// method, the Upgrade, Connection and version headers, the key, and the
// origin (see Config.AllowedOrigins), before anything is spent on the
// request.
func (n *Node) checkHandshake(w http.ResponseWriter, r *http.Request, subprotocols []string) (handshake, *handshakeRefusal) {
	var hs handshake
	switch {
	case r.Method != http.MethodGet:
		w.Header().Set("Allow", http.MethodGet)
		return hs, &handshakeRefusal{http.StatusMethodNotAllowed, "Method Not Allowed: a WebSocket handshake is a GET"}
	case !headerHasToken(r.Header, "Connection", "upgrade") || !headerHasToken(r.Header, "Upgrade", "websocket"):
		return hs, &handshakeRefusal{http.StatusBadRequest, "Bad Request: not a WebSocket handshake (it needs Connection: Upgrade and Upgrade: websocket)"}
	case r.Header.Get("Sec-WebSocket-Version") != "13":
		w.Header().Set("Sec-WebSocket-Version", "13")
		return hs, &handshakeRefusal{http.StatusUpgradeRequired, "Upgrade Required: this server speaks WebSocket version 13"}
	}
	hs.key = r.Header.Get("Sec-WebSocket-Key")
	if k, err := base64.StdEncoding.DecodeString(hs.key); err != nil || len(k) != 16 {
		return hs, &handshakeRefusal{http.StatusBadRequest, "Bad Request: Sec-WebSocket-Key must be 16 bytes in base64"}
	}
	if !n.checkOrigin(r) {
		return hs, n.originRefused(r)
	}
	for _, p := range headerList(r.Header, "Sec-WebSocket-Protocol") {
		if hs.subprotocol == "" && slices.Contains(subprotocols, p) {
			hs.subprotocol = p
		}
	}
	if n.cfg.EnableCompression {
		hs.deflateParams, hs.deflate = acceptDeflate(r.Header)
	}
	return hs, nil
}

// originRefused logs a refused origin (a warning once per origin, naming
// the setting that would admit it) and says so.
func (n *Node) originRefused(r *http.Request) *handshakeRefusal {
	origin := r.Header.Get("Origin")
	if n.originWarned.first(origin) {
		n.log.Warn("refused a browser connection from an origin that is not allowed; if the page is yours, add its origin to allowed_origins (Config.AllowedOrigins)",
			"origin", origin, "remote", n.ClientAddr(r))
	} else {
		n.log.Debug("websocket handshake refused", "status", http.StatusForbidden, "remote", n.ClientAddr(r), "origin", origin)
	}
	return &handshakeRefusal{http.StatusForbidden, "Forbidden: origin " + origin + " is not allowed"}
}

// acceptGUID is RFC 6455's, for Sec-WebSocket-Accept.
const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// errEarlyData: the client sent bytes after its handshake before reading
// the answer, which RFC 6455 (section 4.1) forbids.
var errEarlyData = errors.New("the client sent data before the handshake's answer")

// accept answers a checked handshake with 101 Switching Protocols, within
// Config.HandshakeTimeout, and returns the socket, now the connection's.
func (n *Node) accept(w http.ResponseWriter, hs handshake) (net.Conn, error) {
	nc, resp, err := n.hijack(w, hs)
	if err != nil {
		return nil, err
	}
	if err := n.switchProtocols(nc, resp); err != nil {
		nc.Close()
		return nil, err
	}
	return nc, nil
}

// switchProtocols writes resp, the 101 of hijack, within
// Config.HandshakeTimeout.
func (n *Node) switchProtocols(nc net.Conn, resp []byte) error {
	_ = nc.SetDeadline(time.Now().Add(n.cfg.HandshakeTimeout))
	if _, err := nc.Write(resp); err != nil {
		return err
	}
	_ = nc.SetDeadline(time.Time{})
	return nil
}

// hijack takes the socket of a checked handshake and returns it with the
// 101 Switching Protocols that answers it, not yet written.
func (n *Node) hijack(w http.ResponseWriter, hs handshake) (net.Conn, []byte, error) {
	nc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// A ResponseWriter that cannot hand over its connection (a
		// middleware's wrapper without Unwrap, HTTP/2): it can still answer.
		http.Error(w, "Internal Server Error: the connection cannot be taken over for a WebSocket", http.StatusInternalServerError)
		return nil, nil, err
	}
	if brw.Reader.Buffered() > 0 {
		_, _ = nc.Write([]byte("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n"))
		nc.Close()
		return nil, nil, errEarlyData
	}
	sum := sha1.Sum([]byte(hs.key + acceptGUID))
	resp := make([]byte, 0, 256)
	resp = append(resp, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "...)
	resp = base64.StdEncoding.AppendEncode(resp, sum[:])
	if hs.subprotocol != "" {
		resp = append(resp, "\r\nSec-WebSocket-Protocol: "...)
		resp = append(resp, hs.subprotocol...)
	}
	if hs.deflate {
		// Herald compresses and inflates every message on its own (no
		// context takeover either way), with the full window.
		resp = append(resp, "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"...)
		resp = append(resp, hs.deflateParams...)
	}
	resp = append(resp, "\r\n\r\n"...)
	return nc, resp, nil
}

// acceptDeflate picks the first of the client's permessage-deflate offers
// that Herald can accept as it compresses: without context takeover, with
// the full 32 KiB window. An offer that limits the server's window
// (server_max_window_bits under 15), has a parameter RFC 7692 does not
// define, one twice, or an invalid value, is declined (section 7); with
// none accepted the client talks uncompressed. params are what the answer
// adds for the accepted offer: server_max_window_bits=15 when it was
// offered, which accepting it requires (section 7.1.2.1).
func acceptDeflate(h http.Header) (params string, ok bool) {
	for _, offer := range headerList(h, "Sec-WebSocket-Extensions") {
		if params, ok := deflateOffer(offer); ok {
			return params, true
		}
	}
	return "", false
}

func deflateOffer(offer string) (params string, ok bool) {
	parts := strings.Split(offer, ";")
	if strings.TrimSpace(parts[0]) != "permessage-deflate" {
		return "", false
	}
	seen := make(map[string]bool)
	for _, p := range parts[1:] {
		name, value, hasValue := strings.Cut(strings.TrimSpace(p), "=")
		name, value = strings.TrimSpace(name), strings.Trim(strings.TrimSpace(value), `"`)
		if seen[name] {
			return "", false
		}
		seen[name] = true
		switch name {
		case "server_no_context_takeover", "client_no_context_takeover":
			if hasValue {
				return "", false
			}
		case "client_max_window_bits": // the client's own window: any it likes
			if hasValue && !windowBits(value) {
				return "", false
			}
		case "server_max_window_bits":
			if value != "15" {
				return "", false // a smaller window than Herald compresses with
			}
			params = "; server_max_window_bits=15"
		default:
			return "", false
		}
	}
	return params, true
}

// windowBits reports whether v is a window size of RFC 7692: 8 to 15.
func windowBits(v string) bool {
	b, err := strconv.Atoi(v)
	return err == nil && b >= 8 && b <= 15 && strconv.Itoa(b) == v
}

// headerList returns the comma-separated elements of every h[name] line.
func headerList(h http.Header, name string) []string {
	var out []string
	for _, line := range h.Values(name) {
		for _, e := range strings.Split(line, ",") {
			if e = strings.TrimSpace(e); e != "" {
				out = append(out, e)
			}
		}
	}
	return out
}

// headerHasToken reports whether h[name] lists token, case-insensitively
// (Connection: keep-alive, Upgrade).
func headerHasToken(h http.Header, name, token string) bool {
	for _, e := range headerList(h, name) {
		if strings.EqualFold(e, token) {
			return true
		}
	}
	return false
}
