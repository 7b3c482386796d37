package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key as
// PEM files, and returns their paths and a pool that trusts it.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "herald test"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, "cert.pem", "CERTIFICATE", der), writePEM(t, "key.pem", "PRIVATE KEY", keyDER), pool
}

// TestServeTLS: with --tls-cert and --tls-key the server speaks https://
// and wss://: a TLS WebSocket client that trusts the certificate
// subscribes and receives a publication made over another wss connection
// and over raw mode; a plain or untrusting client gets nowhere.
func TestServeTLS(t *testing.T) {
	t.Parallel()
	certFile, keyFile, pool := selfSigned(t)
	s := startServer(t, nil, "--tls-cert", certFile, "--tls-key", keyFile, "--close-grace", "100ms")
	if !strings.Contains(s.logs.String(), `"tls":true`) {
		t.Errorf("the listening line does not say tls:\n%s", s.logs)
	}
	tlsConf := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConf, DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := client.Get("https://" + s.addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ok" || resp.TLS == nil || resp.TLS.NegotiatedProtocol == "h2" {
		t.Fatalf("GET /healthz over TLS: %d %q, TLS %+v", resp.StatusCode, body, resp.TLS)
	}

	dial := func(path string) *websocket.Conn {
		t.Helper()
		d := websocket.Dialer{Subprotocols: []string{"herald.v1"}, HandshakeTimeout: 5 * time.Second, TLSClientConfig: tlsConf}
		ws, resp, err := d.Dial("wss://"+s.addr+path, nil)
		if err != nil {
			t.Fatalf("dial wss://%s%s: %v", s.addr, path, err)
		}
		resp.Body.Close()
		t.Cleanup(func() { ws.Close() })
		return ws
	}
	sub := dial("/ws")
	call(t, sub, `{"id":1,"cmd":"subscribe","channel":"secure"}`)
	pub := dial("/ws")
	call(t, pub, `{"id":1,"cmd":"publish","channel":"secure","data":{"text":"over TLS"}}`)
	if _, b := readMessage(t, sub); string(b) != `{"push":"pub","channel":"secure","data":{"text":"over TLS"}}` {
		t.Fatalf("subscriber got %s", b)
	}
	raw := dial("/ws/raw?channel=secure")
	if err := raw.WriteMessage(websocket.BinaryMessage, []byte{0, 1, 2}); err != nil {
		t.Fatal(err)
	}
	if op, b := readMessage(t, sub); op != websocket.BinaryMessage || string(b) != "{\"push\":\"pub\",\"channel\":\"secure\"}\n\x00\x01\x02" {
		t.Fatalf("subscriber got opcode %d %q", op, b)
	}

	// Plain ws:// to the TLS port, and a client that does not trust the
	// certificate, both fail.
	if _, resp, err := dialWS(t, "ws://"+s.addr+"/ws", nil); err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("plain ws:// to the TLS port: %v %v, want 400", err, resp)
	}
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second, TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12}}
	if ws, _, err := d.Dial("wss://"+s.addr+"/ws", nil); err == nil {
		ws.Close()
		t.Error("a client that does not trust the certificate connected")
	} else if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("untrusted certificate: %v", err)
	}

	if err := s.stop(t); err != nil {
		t.Fatalf("shutdown: %v\n%s", err, s.logs)
	}
}

// TestServeTLSHandshakeTimeout: a client that opens a TCP connection to
// the TLS port and never completes the TLS handshake (slowloris, one layer
// down) is cut after read_header_timeout, and the failure is logged.
func TestServeTLSHandshakeTimeout(t *testing.T) {
	t.Parallel()
	certFile, keyFile, _ := selfSigned(t)
	s := startServer(t, nil, "--tls-cert", certFile, "--tls-key", keyFile, "--read-header-timeout", "200ms")
	nc, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	start := time.Now()
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = nc.Read(make([]byte, 64))
	elapsed := time.Since(start)
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("the server kept a silent TLS connection open for %v: %v", elapsed, err)
	}
	if elapsed < 150*time.Millisecond {
		t.Fatalf("cut after %v, before read_header_timeout (200ms)", elapsed)
	}
	waitFor(t, "the handshake error in the log", func() bool {
		return strings.Contains(s.logs.String(), `"level":"WARN","msg":"http: TLS handshake error from `)
	})
}

func TestServeTLSErrors(t *testing.T) {
	t.Parallel()
	certFile, keyFile, _ := selfSigned(t)
	otherCert, _, _ := selfSigned(t)
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"cert without key", []string{"--tls-cert", certFile}, "tls_cert and tls_key go together"},
		{"key without cert", []string{"--tls-key", keyFile}, "tls_cert and tls_key go together"},
		{"missing cert", []string{"--tls-cert", filepath.Join(t.TempDir(), "nope.pem"), "--tls-key", keyFile}, "failed to load tls_cert"},
		{"key of another cert", []string{"--tls-cert", otherCert, "--tls-key", keyFile}, "private key does not match public key"},
		{"key as cert", []string{"--tls-cert", keyFile, "--tls-key", keyFile}, "failed to load tls_cert"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := execute(context.Background(), append([]string{"serve", "--addr", "127.0.0.1:0"}, c.args...), nil, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}
