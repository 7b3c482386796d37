package herald

import (
	"bytes"

	"github.com/heraldhq/herald/protocol"
)

// rawSession is raw relay mode (PROTOCOL.md, "Raw mode") on one
// connection: every message the client sends is published, verbatim and
// with its opcode, to the one channel it subscribed to at the handshake.
// There are no replies: a refusal closes the connection.
type rawSession struct {
	c       *conn
	channel string // validated at the handshake
	exp     expiry // the handshake token's, if it had one
}

var _ session = (*rawSession)(nil)

func (s *rawSession) stop()     { s.exp.stop() }
func (s *rawSession) readDone() {}

func (s *rawSession) message(msg []byte, binary bool) {
	c, n := s.c, s.c.node
	if c.limit() != allowed { // no reply to refuse with: any excess closes
		c.close(CloseRateLimited, "message rate limit exceeded")
		return
	}
	ns, perr := n.channelNamespace(s.channel) // the namespace in force (SetNamespaces)
	if perr == nil {
		perr = n.permit(c.user, c.grants, s.channel, ns.AllowPublish)
	}
	if perr != nil {
		c.close(ClosePolicyViolation, "not allowed to publish to this channel")
		return
	}
	pub := &Publication{Channel: s.channel, Data: bytes.Clone(msg), Binary: binary, Origin: c.id}
	if perr := n.publishHook(c, pub, false); perr != nil {
		code := ClosePolicyViolation
		if perr.Code == protocol.CodeUnavailable {
			code = CloseTryAgainLater
		}
		c.close(code, perr.Message)
		return
	}
	n.metrics.pubRaw.Add(1)
	ctx, cancel := n.opCtx()
	defer cancel()
	res, err := n.publish(ctx, pub, ns.publishOptions("", 0))
	if err != nil {
		n.log.Warn("raw publish failed", "client", c.id, "channel", s.channel, "err", err)
		c.close(CloseTryAgainLater, "publish failed")
		return
	}
	if ns.PublishEvents && n.events != nil {
		pub.Offset = res.Offset
		n.events.published(c, pub)
	}
}
