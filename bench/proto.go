package bench

import (
	"bytes"
	"strconv"
)

// Protocols the generator speaks.
const (
	// ProtoHerald is herald.v1 (Herald and the baselines hub, naive, floor).
	ProtoHerald = "herald"
	// ProtoCentrifuge is centrifuge's JSON protocol (the centrifuge
	// baseline, bench/baseline/centrifuge): a connect command first, then
	// subscribe and publish commands; replies and pushes may come several to
	// a frame, one JSON object a line; the server's app-level ping is an
	// empty object, answered with one.
	ProtoCentrifuge = "centrifuge"
)

// The command ids a subscriber uses: connect (when sent) and subscribe.
const (
	connectID   = 1
	subscribeID = 2
)

// subscribeCommand is what a protocol subscriber sends after the
// handshake: a connect (with token, when there is one, or when the
// protocol requires it) and the subscribe, in one message.
func subscribeCommand(proto, channel, token string) []byte {
	var b []byte
	switch proto {
	case ProtoPusher:
		return pusherSubscribeCommand(channel)
	case ProtoCentrifuge:
		b = append(b, `{"id":1,"connect":{`...)
		if token != "" {
			b = append(b, `"token":"`...)
			b = append(b, token...)
			b = append(b, '"')
		}
		b = append(b, `}}`+"\n"+`{"id":2,"subscribe":{"channel":"`...)
		b = append(b, channel...)
		return append(b, `"}}`...)
	default:
		// herald.v1 takes one command per message: a connect with a token
		// goes first, in its own frame (connectCommand).
		b = append(b, `{"id":2,"cmd":"subscribe","channel":"`...)
		b = append(b, channel...)
		return append(b, `"}`...)
	}
}

// connectCommand is herald.v1's connect with a token, sent before the
// subscribe (nil when there is no token: Herald takes anonymous
// connections without one).
func connectCommand(proto, token string) []byte {
	if proto != ProtoHerald || token == "" {
		return nil
	}
	return []byte(`{"id":1,"cmd":"connect","token":"` + token + `"}`)
}

// publisherConnect is what a publishing connection sends first (nil: none).
func publisherConnect(proto string) []byte {
	if proto == ProtoCentrifuge {
		return []byte(`{"id":1,"connect":{}}`)
	}
	return nil
}

// appendPublish appends one publish command.
func appendPublish(dst []byte, proto string, id uint64, channel string, payload []byte) []byte {
	dst = append(dst, `{"id":`...)
	dst = strconv.AppendUint(dst, id, 10)
	if proto == ProtoCentrifuge {
		dst = append(dst, `,"publish":{"channel":"`...)
		dst = append(dst, channel...)
		dst = append(dst, `","data":`...)
		dst = append(dst, payload...)
		return append(dst, `}}`...)
	}
	dst = append(dst, `,"cmd":"publish","channel":"`...)
	dst = append(dst, channel...)
	dst = append(dst, `","data":`...)
	dst = append(dst, payload...)
	return append(dst, '}')
}

var (
	replyPrefix     = []byte(`{"id":`)
	subscribeReply  = []byte(`{"id":2,`)
	subscribeOK     = []byte(`{"id":2}`) // herald.v1's reply without a result
	subscribeError  = []byte(`{"id":2,"error"`)
	connectError    = []byte(`{"id":1,"error"`)
	emptyObjectLine = []byte(`{}`)
)

// subscribeOutcome reads a message a subscriber got before its subscribe
// reply: done when the reply is in it, refused when the connect or the
// subscribe was.
func subscribeOutcome(msg []byte) (done, refused bool) {
	if done, refused, ok := pusherOutcome(msg); ok {
		return done, refused
	}
	if bytes.Contains(msg, connectError) || bytes.Contains(msg, subscribeError) {
		return true, true
	}
	return bytes.Contains(msg, subscribeReply) || bytes.Contains(msg, subscribeOK), false
}

// countReplies counts the replies in a message (centrifuge puts several in
// one frame) and whether any is an error.
func countReplies(msg []byte) (n int, failed bool) {
	for line := range bytes.SplitSeq(msg, []byte("\n")) {
		if bytes.HasPrefix(line, replyPrefix) {
			n++
			if bytes.Contains(line, []byte(`"error"`)) {
				failed = true
			}
		}
	}
	return n, failed
}

// isAppPing reports whether msg holds centrifuge's app-level ping: an
// empty object on a line of its own.
func isAppPing(msg []byte) bool {
	if len(msg) > 64 && !bytes.Contains(msg, []byte("\n{}")) && !bytes.HasPrefix(msg, []byte("{}\n")) {
		return false
	}
	for line := range bytes.SplitSeq(msg, []byte("\n")) {
		if bytes.Equal(line, emptyObjectLine) {
			return true
		}
	}
	return false
}
