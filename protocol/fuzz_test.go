package protocol_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"github.com/heraldhq/herald/protocol"
)

// FuzzDecodeCommand feeds arbitrary frames to the decoder every client
// message goes through. Besides the f.Add seeds below, the corpus in
// testdata/fuzz/FuzzDecodeCommand holds regression seeds; plain `go test`
// runs all of them.
//
//	go test -run=^$ -fuzz=FuzzDecodeCommand -fuzztime=30s ./protocol
func FuzzDecodeCommand(f *testing.F) {
	f.Add([]byte(`{"id":1,"cmd":"subscribe","channel":"chat"}`), false)
	f.Add([]byte(`{"id":2,"cmd":"publish","channel":"chat","data":{"text":"hi"}}`), false)
	f.Add([]byte(`{"id":3,"cmd":"ping","extra":[1,{"a":null}]}`), false)
	f.Add([]byte(`{"id":0,"cmd":"ping"}`), false)
	f.Add([]byte(`{"id":4,"cmd":["x"]}`), false)
	f.Add([]byte(`{"id":5,"cmd":"publish","data":}`), false)
	f.Add([]byte("{\"id\":6,\"cmd\":\"publish\",\"channel\":\"f\"}\n\xff\x00\npayload"), true)
	f.Add([]byte("{\"id\":7,\"cmd\":\"publish\",\"data\":1}\n"), true)
	f.Add([]byte(`{"id":8,"cmd":"publish"}`), true)
	f.Add([]byte("\n"), true)

	f.Fuzz(func(t *testing.T, frame []byte, binary bool) {
		orig := bytes.Clone(frame)
		cmd, payload, err := protocol.DecodeCommand(frame, binary)
		if !bytes.Equal(frame, orig) {
			t.Fatalf("DecodeCommand modified its input")
		}

		if err != nil {
			// The server replies with whatever error it gets, so it must
			// always be a bad_request *Error.
			var perr *protocol.Error
			if !errors.As(err, &perr) || perr.Code != protocol.CodeBadRequest {
				t.Fatalf("error %v (%T) is not a bad_request *protocol.Error", err, err)
			}
			if payload != nil {
				t.Fatalf("payload %q returned with error %v", payload, err)
			}
			return
		}

		if cmd.ID == 0 || cmd.Cmd == "" {
			t.Fatalf("accepted a command without id or cmd: %+v", cmd)
		}
		if binary {
			// The payload is exactly what follows the first '\n', and the
			// header carried no data of its own.
			i := bytes.IndexByte(frame, '\n')
			if i < 0 || !bytes.HasSuffix(frame, payload) || len(payload) != len(frame)-i-1 {
				t.Fatalf("binary payload %q is not the part of %q after the first newline", payload, frame)
			}
			if len(cmd.Data) != 0 {
				t.Fatalf("binary command kept data %q", cmd.Data)
			}
		} else {
			if !bytes.Equal(payload, cmd.Data) {
				t.Fatalf("text payload %q != cmd.Data %q", payload, cmd.Data)
			}
			if len(payload) != 0 && !json.Valid(payload) {
				t.Fatalf("text payload %q is not valid JSON", payload)
			}
		}

		// What a client library produces by re-encoding the command must
		// decode to the same command: the decoder accepts its own format.
		enc, err := json.Marshal(cmd)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", cmd, err)
		}
		if binary {
			enc = append(enc, '\n')
			enc = append(enc, payload...)
		}
		cmd2, payload2, err := protocol.DecodeCommand(enc, binary)
		if err != nil {
			t.Fatalf("re-encoded command %q does not decode: %v", enc, err)
		}
		if cmd2.ID != cmd.ID || cmd2.Cmd != cmd.Cmd || cmd2.Channel != cmd.Channel {
			t.Fatalf("re-decoded %+v, want %+v", cmd2, cmd)
		}
		if binary && !bytes.Equal(payload2, payload) {
			t.Fatalf("re-decoded payload %q, want %q", payload2, payload)
		}
	})
}

// FuzzChannelPush checks what AppendPushHeader takes on trust: a name that
// ValidChannel accepts can be pasted between JSON quotes unescaped. If the
// character set ever grew a byte that needs escaping, pushes would become
// invalid JSON for every client.
func FuzzChannelPush(f *testing.F) {
	f.Add("chat", uint64(0), []byte(`{"text":"hi"}`))
	f.Add("a_-.:@#,=/!Z9", uint64(7), []byte(`[1,2]`))
	f.Add(`a"b`, uint64(1), []byte(`null`))
	f.Add(`a\b`, uint64(1), []byte(`"x"`))
	f.Add("caf\u00e9", uint64(18446744073709551615), []byte(`0`))
	f.Add("", uint64(0), []byte("not json"))

	f.Fuzz(func(t *testing.T, channel string, offset uint64, data []byte) {
		if !protocol.ValidChannel(channel) {
			return
		}
		if !json.Valid(data) {
			// The server sends only valid JSON as text data (Node.encode
			// quotes anything else); keep the fuzzed channel, fix the data.
			data = []byte(`null`)
		}

		text := protocol.AppendTextPush(nil, protocol.PushPub, channel, offset, data)
		if !json.Valid(text) {
			t.Fatalf("text push for channel %q is not valid JSON: %s", channel, text)
		}
		var p protocol.Push
		if err := json.Unmarshal(text, &p); err != nil {
			t.Fatalf("decode %s: %v", text, err)
		}
		if p.Push != protocol.PushPub || p.Channel != channel || p.Offset != offset {
			t.Fatalf("decoded %+v from %s, want channel %q offset %d", p, text, channel, offset)
		}
		if !bytes.Equal(p.Data, bytes.Trim(data, " \t\r\n")) {
			t.Fatalf("decoded data %q, want %q", p.Data, data)
		}

		bin := protocol.AppendBinaryPush(nil, protocol.PushPub, channel, offset, data)
		header, payload, err := protocol.SplitBinary(bin)
		if err != nil {
			t.Fatalf("SplitBinary: %v", err)
		}
		var h protocol.Push
		if err := json.Unmarshal(header, &h); err != nil || h.Channel != channel || h.Offset != offset {
			t.Fatalf("binary header %s decoded to %+v, %v; want channel %q", header, h, err, channel)
		}
		if !bytes.Equal(payload, data) {
			t.Fatalf("binary payload %q, want %q", payload, data)
		}
	})
}
