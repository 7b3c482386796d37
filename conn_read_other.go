//go:build !unix

package herald

// pollable: elsewhere the reader blocks in Read with a buffer of its own.
const pollable = false

func (c *conn) tryRead(fd uintptr) bool { panic("unreachable: not pollable") }
