package protocol_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/heraldhq/herald/protocol"
)

// wantBadRequest checks the contract every DecodeCommand failure shares: the
// error is an *protocol.Error with CodeBadRequest, so the server can turn it
// into a reply without inspecting it further.
func wantBadRequest(t *testing.T, err error) *protocol.Error {
	t.Helper()
	if err == nil {
		t.Fatal("want an error, got nil")
	}
	var perr *protocol.Error
	if !errors.As(err, &perr) {
		t.Fatalf("error %v (%T) is not a *protocol.Error", err, err)
	}
	if perr.Code != protocol.CodeBadRequest {
		t.Fatalf("code = %q, want %q (error %v)", perr.Code, protocol.CodeBadRequest, err)
	}
	if perr.Message == "" {
		t.Fatal("error has an empty message: clients show it to developers")
	}
	return perr
}

// binFrame builds a binary frame the way clients do: header, '\n', payload.
func binFrame(header string, payload []byte) []byte {
	return append([]byte(header+"\n"), payload...)
}

func TestDecodeCommand(t *testing.T) {
	t.Parallel()

	// Bytes that break naive frame handling: invalid UTF-8, NUL, and '\n'
	// (which must not be taken for a second header separator).
	nasty := []byte("\xff\xfe\x00\n{\"id\":9}\n\x80tail\n")

	tests := []struct {
		name   string
		frame  []byte
		binary bool

		want        protocol.Command // on success; only ID is checked on error
		wantPayload []byte
		wantErr     string // substring of the error message; "" means success
	}{
		// Valid text frames.
		{
			name:  "text subscribe",
			frame: []byte(`{"id":1,"cmd":"subscribe","channel":"chat"}`),
			want:  protocol.Command{ID: 1, Cmd: "subscribe", Channel: "chat"},
		},
		{
			name:  "text publish keeps data",
			frame: []byte(`{"id":2,"cmd":"publish","channel":"chat","data":{"text":"hi"}}`),
			want:  protocol.Command{ID: 2, Cmd: "publish", Channel: "chat", Data: json.RawMessage(`{"text":"hi"}`)},

			wantPayload: []byte(`{"text":"hi"}`),
		},
		{
			// Data is a RawMessage: the server forwards the client's bytes,
			// inner whitespace included, rather than re-encoding them.
			name:        "text publish keeps data byte for byte",
			frame:       []byte(`{"id":3,"cmd":"publish","channel":"c","data": [1, 2 ,"\u00e9"] }`),
			want:        protocol.Command{ID: 3, Cmd: "publish", Channel: "c", Data: json.RawMessage(`[1, 2 ,"\u00e9"]`)},
			wantPayload: []byte(`[1, 2 ,"\u00e9"]`),
		},
		{
			name:        "text publish null data",
			frame:       []byte(`{"id":4,"cmd":"publish","channel":"c","data":null}`),
			want:        protocol.Command{ID: 4, Cmd: "publish", Channel: "c", Data: json.RawMessage(`null`)},
			wantPayload: []byte(`null`),
		},
		{
			name:  "text largest id",
			frame: []byte(`{"id":18446744073709551615,"cmd":"ping"}`),
			want:  protocol.Command{ID: 18446744073709551615, Cmd: "ping"},
		},
		{
			name:  "text pretty-printed",
			frame: []byte("{\n  \"id\": 5,\n  \"cmd\": \"ping\"\n}\n"),
			want:  protocol.Command{ID: 5, Cmd: "ping"},
		},
		{
			// Forward compatibility: later versions add fields.
			name:  "text unknown fields ignored",
			frame: []byte(`{"id":6,"future":{"x":[1,2]},"cmd":"ping","v":2,"token":null}`),
			want:  protocol.Command{ID: 6, Cmd: "ping"},
		},
		{
			// Unknown commands decode fine: answering unknown_command is the
			// server's job, not the decoder's.
			name:  "text unknown command decodes",
			frame: []byte(`{"id":7,"cmd":"presence","channel":"c"}`),
			want:  protocol.Command{ID: 7, Cmd: "presence", Channel: "c"},
		},

		// Valid binary frames.
		{
			name:        "binary publish",
			frame:       binFrame(`{"id":10,"cmd":"publish","channel":"files"}`, []byte("raw bytes")),
			binary:      true,
			want:        protocol.Command{ID: 10, Cmd: "publish", Channel: "files"},
			wantPayload: []byte("raw bytes"),
		},
		{
			name:        "binary payload with non-UTF-8 and newlines survives",
			frame:       binFrame(`{"id":11,"cmd":"publish","channel":"files"}`, nasty),
			binary:      true,
			want:        protocol.Command{ID: 11, Cmd: "publish", Channel: "files"},
			wantPayload: nasty,
		},
		{
			name:        "binary empty payload",
			frame:       binFrame(`{"id":12,"cmd":"publish","channel":"files"}`, nil),
			binary:      true,
			want:        protocol.Command{ID: 12, Cmd: "publish", Channel: "files"},
			wantPayload: []byte{},
		},
		{
			name:        "binary unknown header fields ignored",
			frame:       binFrame(`{"id":13,"cmd":"publish","channel":"f","mime":"image/png"}`, []byte{0, 1, 2}),
			binary:      true,
			want:        protocol.Command{ID: 13, Cmd: "publish", Channel: "f"},
			wantPayload: []byte{0, 1, 2},
		},

		// Malformed frames.
		{name: "empty text frame", frame: []byte{}, wantErr: "malformed JSON"},
		{name: "not JSON", frame: []byte(`hello`), wantErr: "malformed JSON"},
		{name: "truncated object", frame: []byte(`{"cmd":"ping"`), wantErr: "malformed JSON"},
		{name: "array", frame: []byte(`[1,2]`), wantErr: "malformed JSON"},
		{name: "string", frame: []byte(`"ping"`), wantErr: "malformed JSON"},
		{name: "null frame has no id", frame: []byte(`null`), wantErr: `missing "id"`},
		{name: "missing id", frame: []byte(`{"cmd":"ping"}`), wantErr: `missing "id"`},
		{name: "id 0", frame: []byte(`{"id":0,"cmd":"ping"}`), wantErr: `missing "id"`},
		{name: "negative id", frame: []byte(`{"id":-1,"cmd":"ping"}`), wantErr: `field "id"`},
		{name: "fractional id", frame: []byte(`{"id":1.5,"cmd":"ping"}`), wantErr: `field "id"`},
		{name: "string id", frame: []byte(`{"id":"1","cmd":"ping"}`), wantErr: `field "id"`},
		{name: "id past uint64", frame: []byte(`{"id":18446744073709551616,"cmd":"ping"}`), wantErr: `field "id"`},
		{name: "missing cmd keeps id", frame: []byte(`{"id":20}`), want: protocol.Command{ID: 20}, wantErr: `missing "cmd"`},
		{name: "empty cmd keeps id", frame: []byte(`{"id":21,"cmd":""}`), want: protocol.Command{ID: 21}, wantErr: `missing "cmd"`},
		{
			// The id is readable even though another field has the wrong
			// type, so the error reply reaches the right request.
			name:    "wrong cmd type keeps id",
			frame:   []byte(`{"id":22,"cmd":["publish"]}`),
			want:    protocol.Command{ID: 22},
			wantErr: `field "cmd"`,
		},
		{
			name:    "wrong channel type keeps id",
			frame:   []byte(`{"channel":42,"id":23,"cmd":"subscribe"}`),
			want:    protocol.Command{ID: 23},
			wantErr: `field "channel"`,
		},
		{
			name:    "binary without newline",
			frame:   []byte(`{"id":30,"cmd":"publish","channel":"f"}`),
			binary:  true,
			wantErr: `no '\n'`,
		},
		{
			name:    "binary header with data",
			frame:   binFrame(`{"id":31,"cmd":"publish","channel":"f","data":{"x":1}}`, []byte("p")),
			binary:  true,
			want:    protocol.Command{ID: 31},
			wantErr: `"data"`,
		},
		{
			// "data":null is still a data field: a binary frame has one place
			// for its payload, and it is after the header.
			name:    "binary header with null data",
			frame:   binFrame(`{"id":32,"cmd":"publish","channel":"f","data":null}`, nil),
			binary:  true,
			want:    protocol.Command{ID: 32},
			wantErr: `"data"`,
		},
		{
			name:    "binary malformed header",
			frame:   binFrame(`{"cmd":"publish",}`, []byte("p")),
			binary:  true,
			wantErr: "malformed JSON",
		},
		{
			// The first '\n' ends the header, so a pretty-printed header is
			// cut after "{": binary headers must be compact JSON.
			name:    "binary pretty header",
			frame:   binFrame("{\n\"id\":33,\"cmd\":\"ping\"}", nil),
			binary:  true,
			wantErr: "malformed JSON",
		},
		{
			name:    "binary missing id",
			frame:   binFrame(`{"cmd":"publish","channel":"f"}`, []byte("p")),
			binary:  true,
			wantErr: `missing "id"`,
		},
		{
			name:    "binary wrong type keeps id",
			frame:   binFrame(`{"id":34,"cmd":"publish","channel":false}`, []byte("p")),
			binary:  true,
			want:    protocol.Command{ID: 34},
			wantErr: `field "channel"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			frame := bytes.Clone(tt.frame)
			cmd, payload, err := protocol.DecodeCommand(frame, tt.binary)
			if !bytes.Equal(frame, tt.frame) {
				t.Fatalf("DecodeCommand modified its input: %q", frame)
			}
			if tt.wantErr != "" {
				perr := wantBadRequest(t, err)
				if !strings.Contains(perr.Message, tt.wantErr) {
					t.Errorf("message %q does not mention %q", perr.Message, tt.wantErr)
				}
				if cmd.ID != tt.want.ID {
					t.Errorf("cmd.ID = %d, want %d", cmd.ID, tt.want.ID)
				}
				if payload != nil {
					t.Errorf("payload = %q on error, want nil", payload)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if cmd.ID != tt.want.ID || cmd.Cmd != tt.want.Cmd || cmd.Channel != tt.want.Channel || !bytes.Equal(cmd.Data, tt.want.Data) {
				t.Errorf("cmd = %+v (data %q), want %+v (data %q)", cmd, cmd.Data, tt.want, tt.want.Data)
			}
			if !bytes.Equal(payload, tt.wantPayload) {
				t.Errorf("payload = %q, want %q", payload, tt.wantPayload)
			}
			if tt.binary && len(payload) > 0 {
				// The payload aliases the frame (no copy on the hot path).
				if &payload[0] != &frame[len(frame)-len(payload)] {
					t.Error("binary payload does not alias the end of the frame")
				}
			}
			if !tt.binary && !bytes.Equal(payload, cmd.Data) {
				t.Errorf("text payload %q != cmd.Data %q", payload, cmd.Data)
			}
		})
	}
}

func TestSplitBinary(t *testing.T) {
	t.Parallel()
	tests := []struct {
		frame, header, payload string
		noSep                  bool
	}{
		{frame: "h\np", header: "h", payload: "p"},
		{frame: "h\n", header: "h", payload: ""},
		{frame: "\np", header: "", payload: "p"},
		{frame: "h\np\nq\n", header: "h", payload: "p\nq\n"}, // the first '\n' splits
		{frame: "h", noSep: true},
		{frame: "", noSep: true},
	}
	for _, tt := range tests {
		t.Run(tt.frame, func(t *testing.T) {
			t.Parallel()
			h, p, err := protocol.SplitBinary([]byte(tt.frame))
			if tt.noSep {
				if !errors.Is(err, protocol.ErrNoSeparator) {
					t.Fatalf("err = %v, want ErrNoSeparator", err)
				}
				return
			}
			if err != nil || string(h) != tt.header || string(p) != tt.payload {
				t.Fatalf("= %q, %q, %v; want %q, %q, nil", h, p, err, tt.header, tt.payload)
			}
		})
	}
}

// channelPunct is the punctuation ValidChannel documents, written out again
// here so that a change to the table in protocol.go shows up as a failure.
const channelPunct = "_-.:@#,=/!"

func allowedChannelByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		strings.IndexByte(channelPunct, c) >= 0
}

func TestValidChannel(t *testing.T) {
	t.Parallel()
	type tc struct {
		name string
		in   string
		want bool
	}
	tests := []tc{
		{"empty", "", false},
		{"one byte", "a", true},
		{"255 bytes", strings.Repeat("a", protocol.MaxChannelLen), true},
		{"256 bytes", strings.Repeat("a", protocol.MaxChannelLen+1), false},
		{"255 bytes, last invalid", strings.Repeat("a", protocol.MaxChannelLen-1) + " ", false},
		{"letters and digits", "abcxyzABCXYZ0189", true},
		{"namespaced", "chat:room-1", true},
		{"all punctuation", channelPunct, true},
		{"double quote", `a"b`, false},
		{"backslash", `a\b`, false},
		{"space", "a b", false},
		{"tab", "a\tb", false},
		{"newline", "a\nb", false},
		{"NUL", "a\x00b", false},
		{"DEL", "a\x7fb", false},
		{"non-ASCII letter", "caf\u00e9", false},
		{"CJK", "\u65e5\u672c", false},
		{"invalid UTF-8", "a\xffb", false},
		{"HTML-escaped by encoding/json", "a<b>&", false},
		{"query punctuation", "a?b&c", false},
		{"percent", "a%20b", false},
	}
	for _, p := range []byte(channelPunct) {
		s := string(p)
		tests = append(tests, tc{"punct " + s + " alone", s, true}, tc{"punct " + s + " inside", "a" + s + "b", true})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := protocol.ValidChannel(tt.in); got != tt.want {
				t.Errorf("ValidChannel(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

// TestValidChannelEveryByte checks all 256 byte values against the documented
// set, and the property AppendPushHeader relies on: every valid name encodes
// as a JSON string without escaping, so it can be copied between quotes.
func TestValidChannelEveryByte(t *testing.T) {
	t.Parallel()
	for c := 0; c < 256; c++ {
		s := "x" + string([]byte{byte(c)}) + "y"
		want := allowedChannelByte(byte(c))
		if got := protocol.ValidChannel(s); got != want {
			t.Errorf("ValidChannel(%q) = %v, want %v", s, got, want)
		}
		if !want {
			continue
		}
		b, err := json.Marshal(s)
		if err != nil || string(b) != `"`+s+`"` {
			t.Errorf("json.Marshal(%q) = %s, %v: a valid channel byte needs escaping", s, b, err)
		}
	}
}

func TestAppendTextPushRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		kind    string
		channel string
		offset  uint64
		data    string
	}{
		{"pub object", protocol.PushPub, "chat", 0, `{"text":"hi"}`},
		{"pub with offset", protocol.PushPub, "chat:room-1", 7, `[1,2,3]`},
		{"largest offset", protocol.PushPub, "c", 18446744073709551615, `0`},
		{"message without channel", protocol.PushMessage, "", 0, `"direct"`},
		{"null data", protocol.PushPub, "c", 1, `null`},
		{"unicode data", protocol.PushPub, "c", 2, `"h\u00e9llo \u2028 \"q\" \\"`},
		{"spaced data kept", protocol.PushPub, "c", 3, `{ "a" : [ 1 , 2 ] }`},
		{"every punctuation in channel", protocol.PushPub, "a" + channelPunct + "Z9", 4, `true`},
		{"longest channel", protocol.PushPub, strings.Repeat("z", protocol.MaxChannelLen), 5, `{}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// Append to a non-empty dst: callers reuse buffers.
			prefix := []byte("prefix")
			out := protocol.AppendTextPush(bytes.Clone(prefix), tt.kind, tt.channel, tt.offset, []byte(tt.data))
			if !bytes.HasPrefix(out, prefix) {
				t.Fatalf("dst prefix overwritten: %q", out)
			}
			msg := out[len(prefix):]
			if !json.Valid(msg) {
				t.Fatalf("not valid JSON: %s", msg)
			}
			var p protocol.Push
			if err := json.Unmarshal(msg, &p); err != nil {
				t.Fatalf("decode %s: %v", msg, err)
			}
			if p.Push != tt.kind || p.Channel != tt.channel || p.Offset != tt.offset || string(p.Data) != tt.data {
				t.Errorf("decoded %+v (data %s), want kind %q channel %q offset %d data %s",
					p, p.Data, tt.kind, tt.channel, tt.offset, tt.data)
			}
			// The header alone is the push without its data and closing brace.
			hdr := protocol.AppendPushHeader(nil, tt.kind, tt.channel, tt.offset)
			if !bytes.HasPrefix(msg, hdr) {
				t.Errorf("push %s does not start with its header %s", msg, hdr)
			}
		})
	}
}

func TestAppendTextPushExact(t *testing.T) {
	t.Parallel()
	// The wire format of PROTOCOL.md, byte for byte: field order and
	// omission of zero offset and empty channel are part of the contract.
	tests := []struct {
		got, want string
	}{
		{string(protocol.AppendTextPush(nil, "pub", "chat", 7, []byte(`{"text":"hi"}`))), `{"push":"pub","channel":"chat","offset":7,"data":{"text":"hi"}}`},
		{string(protocol.AppendTextPush(nil, "pub", "chat", 0, []byte(`1`))), `{"push":"pub","channel":"chat","data":1}`},
		{string(protocol.AppendTextPush(nil, "message", "", 0, []byte(`"x"`))), `{"push":"message","data":"x"}`},
		{string(protocol.AppendBinaryPush(nil, "pub", "f", 2, []byte("\x00\n"))), "{\"push\":\"pub\",\"channel\":\"f\",\"offset\":2}\n\x00\n"},
		{string(protocol.AppendDeltaPush(nil, "prices", 8, []byte("1\n0:;"))), "{\"push\":\"pub\",\"channel\":\"prices\",\"offset\":8,\"delta\":true}\n1\n0:;"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got  %q\nwant %q", tt.got, tt.want)
		}
	}
}

func TestAppendBinaryPushRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		kind    string
		channel string
		offset  uint64
		payload []byte
	}{
		{"pub", protocol.PushPub, "files", 0, []byte("raw")},
		{"pub with offset", protocol.PushPub, "files:img", 42, []byte{0x89, 'P', 'N', 'G'}},
		{"newlines and invalid UTF-8 in payload", protocol.PushPub, "f", 1, []byte("\n\n\xff\xfe\x00{\"push\":\"x\"}\n")},
		{"empty payload", protocol.PushPub, "f", 0, nil},
		{"message without channel", protocol.PushMessage, "", 0, []byte("hello\n")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out := protocol.AppendBinaryPush([]byte("prefix"), tt.kind, tt.channel, tt.offset, tt.payload)
			msg := out[len("prefix"):]
			header, payload, err := protocol.SplitBinary(msg)
			if err != nil {
				t.Fatalf("SplitBinary(%q): %v", msg, err)
			}
			var p protocol.Push
			if err := json.Unmarshal(header, &p); err != nil {
				t.Fatalf("decode header %s: %v", header, err)
			}
			if p.Push != tt.kind || p.Channel != tt.channel || p.Offset != tt.offset || p.Data != nil {
				t.Errorf("header decoded to %+v, want kind %q channel %q offset %d and no data",
					p, tt.kind, tt.channel, tt.offset)
			}
			if !bytes.Equal(payload, tt.payload) {
				t.Errorf("payload = %q, want %q", payload, tt.payload)
			}
		})
	}
}

func TestAppendReplyRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		reply protocol.Reply
		exact string // expected encoding; "" to skip
	}{
		{"ok without result", protocol.Reply{ID: 1}, `{"id":1}`},
		{"result", protocol.Reply{ID: 2, Result: json.RawMessage(`{"offset":3,"epoch":"e1"}`)}, `{"id":2,"result":{"offset":3,"epoch":"e1"}}`},
		{"connect-style result", protocol.Reply{ID: 3, Result: json.RawMessage(`{"client":"abc_-"}`)}, ""},
		{
			"error",
			protocol.Reply{ID: 4, Error: protocol.Errorf(protocol.CodeBadChannel, "invalid channel name %q", "a b")},
			`{"id":4,"error":{"code":"bad_channel","message":"invalid channel name \"a b\""}}`,
		},
		{"error for id 0", protocol.Reply{Error: &protocol.Error{Code: protocol.CodeBadRequest, Message: "malformed JSON"}}, ""},
		{"largest id", protocol.Reply{ID: 18446744073709551615}, `{"id":18446744073709551615}`},
		{"unicode message", protocol.Reply{ID: 5, Error: &protocol.Error{Code: protocol.CodeInternal, Message: "caf\u00e9 \u2028 <>&"}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out := protocol.AppendReply([]byte("prefix"), tt.reply)
			msg := out[len("prefix"):]
			if tt.exact != "" && string(msg) != tt.exact {
				t.Errorf("encoded %s, want %s", msg, tt.exact)
			}
			var r protocol.Reply
			if err := json.Unmarshal(msg, &r); err != nil {
				t.Fatalf("decode %s: %v", msg, err)
			}
			if r.ID != tt.reply.ID || !bytes.Equal(r.Result, tt.reply.Result) {
				t.Errorf("decoded %+v (result %s), want %+v (result %s)", r, r.Result, tt.reply, tt.reply.Result)
			}
			if (r.Error == nil) != (tt.reply.Error == nil) || r.Error != nil && *r.Error != *tt.reply.Error {
				t.Errorf("decoded error %+v, want %+v", r.Error, tt.reply.Error)
			}
		})
	}
}

func TestErrorString(t *testing.T) {
	t.Parallel()
	err := error(protocol.Errorf(protocol.CodeTooLarge, "payload of %d bytes", 70000))
	if got, want := err.Error(), "too_large: payload of 70000 bytes"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestHistoryPublicationJSON(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		p    protocol.HistoryPublication
		want string
	}{
		{protocol.HistoryPublication{Offset: 1, Data: json.RawMessage(`{"a":1}`)}, `{"offset":1,"data":{"a":1}}`},
		{protocol.HistoryPublication{Offset: 2, Binary: []byte{0xff, 0}, IsBinary: true}, `{"offset":2,"binary":"/wA="}`},
		{protocol.HistoryPublication{Offset: 3, IsBinary: true}, `{"offset":3,"binary":""}`}, // empty binary stays binary
	} {
		b, err := json.Marshal(tc.p)
		if err != nil || string(b) != tc.want {
			t.Errorf("marshal %+v: %s %v, want %s", tc.p, b, err, tc.want)
		}
		var back protocol.HistoryPublication
		if err := json.Unmarshal(b, &back); err != nil || back.IsBinary != tc.p.IsBinary || back.Offset != tc.p.Offset || string(back.Binary) != string(tc.p.Binary) {
			t.Errorf("round trip of %s: %+v %v", b, back, err)
		}
	}
}

func TestAppendHistoryResult(t *testing.T) {
	in := protocol.HistoryResult{
		Publications: []protocol.HistoryPublication{
			{Offset: 7, Data: json.RawMessage(`{ "a" : "<&>" }`)},
			{Offset: 8, Binary: []byte{0, 0xff, '\n'}, IsBinary: true},
			{Offset: 9, IsBinary: true}, // empty binary: "binary":"" is still there
		},
		Offset: 9,
		Epoch:  "e-1",
	}
	b := protocol.AppendHistoryResult(nil, in)
	want := `{"publications":[{"offset":7,"data":{ "a" : "<&>" }},{"offset":8,"binary":"AP8K"},{"offset":9,"binary":""}],"offset":9,"epoch":"e-1"}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
	var out protocol.HistoryResult
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if len(out.Publications) != 3 || !out.Publications[2].IsBinary || string(out.Publications[1].Binary) != "\x00\xff\n" || out.Epoch != "e-1" {
		t.Fatalf("round trip: %+v", out)
	}
	r := protocol.AppendReply(nil, protocol.Reply{ID: 3, Result: b})
	if string(r) != `{"id":3,"result":`+want+`}` {
		t.Fatalf("reply: %s", r)
	}
	if r := protocol.AppendReply(nil, protocol.Reply{ID: 4, Error: protocol.Errorf(protocol.CodeBadChannel, "no <%s>", "x")}); string(r) != `{"id":4,"error":{"code":"bad_channel","message":"no \u003cx\u003e"}}` {
		t.Fatalf("error reply: %s", r)
	}
	if r := protocol.AppendReply(nil, protocol.Reply{ID: 5}); string(r) != `{"id":5}` {
		t.Fatalf("empty reply: %s", r)
	}
}
