package herald

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/heraldhq/herald/protocol"
)

// The one error vocabulary (errors.go): a Node method's refusal is an
// *Error that errors.Is matches with its sentinel, that a herald.v1 reply
// (toProto) and the HTTP surfaces (HTTPStatus) render from its Code; any
// other error reaches a client only as unavailable, its text kept out.
func TestErrorVocabulary(t *testing.T) {
	t.Parallel()
	n, err := New(Config{Logger: nopLogger(), Namespaces: []Namespace{{Name: "plain"}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		err      error
		sentinel error
		code     Code
		status   int
	}{
		{"bad channel", publishErr(n, "has space"), ErrBadChannel, protocol.CodeBadChannel, http.StatusBadRequest},
		{"no namespace", publishErr(n, "nowhere:x"), ErrBadChannel, protocol.CodeBadChannel, http.StatusBadRequest},
		{"not enabled", func() error { _, err := n.Presence(ctx, "plain:x"); return err }(), ErrNotEnabled, protocol.CodeNotEnabled, http.StatusBadRequest},
	} {
		checkRefusal(t, tc.name, tc.err, tc.sentinel, tc.code, tc.status)
	}

	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := n.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	checkRefusal(t, "closed node", publishErr(n, "plain:x"), ErrNodeClosed, protocol.CodeUnavailable, http.StatusServiceUnavailable)

	// An error that is not a refusal (a broker's, say) is no one's to read.
	pe := toProto(errors.New("dial tcp 10.0.0.7:6379: connection refused"))
	if pe.Code != protocol.CodeUnavailable || pe.Message != "temporarily unavailable" {
		t.Errorf("a plain error rendered as %+v, want unavailable without its text", pe)
	}
}

func publishErr(n *Node, channel string) error {
	_, err := n.Publish(context.Background(), channel, []byte(`1`))
	return err
}

// checkRefusal checks that err is an *Error of code, matched by sentinel
// (and by no other sentinel), rendered with code in a reply and status
// over HTTP.
func checkRefusal(t *testing.T, name string, err, sentinel error, code Code, status int) {
	t.Helper()
	var he *Error
	if !errors.As(err, &he) || he.Code != code {
		t.Errorf("%s: %v (%T), want an *Error of code %s", name, err, err, code)
		return
	}
	for _, s := range []error{ErrBadChannel, ErrNotEnabled, ErrNodeClosed} {
		if errors.Is(err, s) != (s == sentinel) {
			t.Errorf("%s: errors.Is(err, %v) = %v", name, s, !(s == sentinel))
		}
	}
	if pe := toProto(err); pe.Code != code || pe.Message != he.Message {
		t.Errorf("%s: reply error %+v, want code %s and message %q", name, pe, code, he.Message)
	}
	if got := HTTPStatus(he.Code); got != status {
		t.Errorf("%s: HTTP status %d, want %d", name, got, status)
	}
}

// Every close code Herald sends is named, and Reconnect says what the
// bundled clients do after it: reconnect, except after 1008 and 4500-4999.
func TestCloseCodeNamesAndReconnect(t *testing.T) {
	t.Parallel()
	for _, c := range []CloseCode{CloseNormal, CloseGoingAway, CloseProtocolError, CloseInvalidPayload,
		ClosePolicyViolation, CloseMessageTooBig, CloseServiceRestart, CloseTryAgainLater, CloseSlowConsumer,
		CloseNoPong, CloseDisconnected, CloseTokenExpired, CloseConnectTimeout, CloseResubscribe,
		CloseRateLimited, CloseForbidden, CloseUnauthorized} {
		if s := c.String(); len(s) <= 5 {
			t.Errorf("close code %d has no name: %q", int(c), s)
		}
		want := c != ClosePolicyViolation && c < 4500
		if c.Reconnect() != want {
			t.Errorf("%v: Reconnect() = %v, want %v", c, c.Reconnect(), want)
		}
	}
	if s := CloseCode(4999).String(); s != "4999" {
		t.Errorf("an unnamed code reads %q", s)
	}
}
