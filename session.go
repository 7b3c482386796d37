package herald

// session is one wire protocol's side of a connection: it turns the
// client's messages into node operations and answers through the
// connection's outbound queue. Each protocol is one session type:
// v1Session (herald.v1, session_v1.go) and rawSession (raw relay,
// session_raw.go); a new protocol is a new session type over the same
// transport and queue, not a new connection.
//
// Both methods run on the connection's reader goroutine, one at a time; a
// session may also run timers of its own, which must only push or close.
type session interface {
	// message handles one complete data message of the client, after the
	// transport checked it (size, UTF-8 of text).
	message(msg []byte, binary bool)
	// stop ends what the session runs by itself (timers), as the
	// connection ends.
	stop()
}
