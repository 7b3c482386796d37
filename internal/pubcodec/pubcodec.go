// Package pubcodec is the compact encoding of a herald.Publication that the
// Redis and NATS brokers put on the wire and in history.
//
// The channel and the offset travel outside the encoding (in the Redis
// pub/sub channel name and a decimal prefix, in NATS subjects and headers),
// so an encoding is made once per publish and never rewritten.
//
// Layout:
//
//	flags   1 byte: bits 0-1 kind, bit 2 binary, bit 3 presence follows,
//	        bit 4 key follows
//	origin  uvarint length, bytes
//	[key: uvarint length, bytes]
//	[presence: client, user, info, each uvarint length and bytes]
//	data    the rest, untouched
//
// A text publication of n bytes from the server side costs n+2 bytes.
package pubcodec

import (
	"encoding/binary"
	"errors"

	"github.com/heraldhq/herald"
)

const (
	flagKind     = 0x03
	flagBinary   = 0x04
	flagPresence = 0x08
	flagKey      = 0x10
)

// ErrMalformed reports bytes that are not an encoded publication.
var ErrMalformed = errors.New("pubcodec: malformed publication")

// Append appends the encoding of pub (less its channel and offset) to dst.
func Append(dst []byte, pub *herald.Publication) []byte {
	flags := byte(pub.Kind) & flagKind
	if pub.Binary {
		flags |= flagBinary
	}
	if pub.Presence != nil {
		flags |= flagPresence
	}
	if pub.Key != "" {
		flags |= flagKey
	}
	dst = append(dst, flags)
	dst = appendString(dst, pub.Origin)
	if pub.Key != "" {
		dst = appendString(dst, pub.Key)
	}
	if p := pub.Presence; p != nil {
		dst = appendString(dst, p.Client)
		dst = appendString(dst, p.User)
		dst = binary.AppendUvarint(dst, uint64(len(p.Info)))
		dst = append(dst, p.Info...)
	}
	return append(dst, pub.Data...)
}

// Size is the length of pub's encoding.
func Size(pub *herald.Publication) int {
	n := 1 + uvarintLen(len(pub.Origin)) + len(pub.Origin) + len(pub.Data)
	if pub.Key != "" {
		n += uvarintLen(len(pub.Key)) + len(pub.Key)
	}
	if p := pub.Presence; p != nil {
		n += uvarintLen(len(p.Client)) + len(p.Client) + uvarintLen(len(p.User)) + len(p.User) + uvarintLen(len(p.Info)) + len(p.Info)
	}
	return n
}

// Decode decodes b into a publication of channel at offset. The
// publication's byte fields are copies: b may be reused.
func Decode(channel string, offset uint64, b []byte) (*herald.Publication, error) {
	if len(b) == 0 {
		return nil, ErrMalformed
	}
	flags := b[0]
	pub := &herald.Publication{Channel: channel, Offset: offset, Kind: herald.PubKind(flags & flagKind), Binary: flags&flagBinary != 0}
	if pub.Kind > herald.KindLeave || flags&0xe0 != 0 {
		return nil, ErrMalformed
	}
	rest := b[1:]
	var err error
	if pub.Origin, rest, err = readString(rest); err != nil {
		return nil, err
	}
	if flags&flagKey != 0 {
		if pub.Key, rest, err = readString(rest); err != nil {
			return nil, err
		}
	}
	if flags&flagPresence != 0 {
		p := &herald.ClientPresence{}
		if p.Client, rest, err = readString(rest); err != nil {
			return nil, err
		}
		if p.User, rest, err = readString(rest); err != nil {
			return nil, err
		}
		var info string
		if info, rest, err = readString(rest); err != nil {
			return nil, err
		}
		if info != "" {
			p.Info = []byte(info)
		}
		pub.Presence = p
	}
	if len(rest) > 0 {
		pub.Data = append([]byte(nil), rest...)
	}
	return pub, nil
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func readString(b []byte) (string, []byte, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return "", nil, ErrMalformed
	}
	return string(b[k : k+int(n)]), b[k+int(n):], nil
}

func uvarintLen(n int) int {
	l := 1
	for n >= 0x80 {
		n >>= 7
		l++
	}
	return l
}
