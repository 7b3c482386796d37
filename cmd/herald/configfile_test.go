package main

import (
	"errors"
	"io"
	"regexp"
	"strings"
	"testing"

	"github.com/heraldhq/herald"
)

// goTypes matches what a Go type name, or a YAML tag, looks like in a
// message: none may reach a user, who wrote YAML, not Go.
var goTypes = regexp.MustCompile(`main\.|herald\.|\b(u?int(8|16|32|64)?|float64|string|bool)\b( |$)|time\.Duration|\[\]|!!|struct|unmarshal`)

// TestConfigFileErrorsInWords: every mistake in the config file is reported
// with the setting's key, the file and the line, and what is wanted in
// words; never with a Go type (main.fileSettings, int, time.Duration) or a
// YAML tag (!!seq), which is what decoding into Go structs used to print.
func TestConfigFileErrorsInWords(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, file string
		want       string // the whole message, FILE standing for the file's path
	}{
		{"a word for a number", `max_connections: "lots"` + "\n",
			`invalid max_connections "lots" (from config file FILE line 1): want a whole number`},
		{"a number too large", "max_connections: 99999999999999999999\n",
			`invalid max_connections "99999999999999999999" (from config file FILE line 1): too large: at most 9223372036854775807`},
		{"a negative size", "max_message_size: -1\n",
			`invalid max_message_size "-1" (from config file FILE line 1): must not be negative`},
		{"a list for a duration", "drain_window: [1]\n",
			`invalid drain_window "[1]" (from config file FILE line 1): want a duration such as 10s or 1m, or off; not a list`},
		{"a mapping for a number", "max_connections:\n  soft: 10\n",
			`invalid max_connections "{soft: 10}" (from config file FILE line 2): want a whole number; not a mapping`},
		{"a list for a bool", "compression: [true]\n",
			`invalid compression "[true]" (from config file FILE line 1): want true or false; not a list`},
		{"a list of lists for origins", "allowed_origins:\n  - [https://a.example]\n",
			`invalid allowed_origins "[https://a.example]" (from config file FILE line 2): want a list of origins such as https://app.example.com, one per item; not a list within the list`},
		{"unknown key", "max_conections: 5\n",
			`unknown setting max_conections (config file FILE line 1): did you mean max_connections? (herald help serve lists every setting)`},
		{"unknown key, nothing close", "colour: blue\n",
			`unknown setting colour (config file FILE line 1): herald help serve lists every setting`},
		{"key twice", "addr: :1\nping_interval: 5s\naddr: :2\n",
			`invalid addr ":2" (from config file FILE line 3): set twice in the file (first at line 1)`},
		{"not a mapping", "- addr: :1\n",
			`failed to parse config file FILE: line 1: want settings as "key: value" lines; not a list`},
		{"plain text", "just some text\n",
			`failed to parse config file FILE: line 1: want settings as "key: value" lines; not a single value`},
		{"bad YAML", "addr: [\n",
			`failed to parse config file FILE: invalid YAML: line 1: did not find expected node content`},
		{"namespaces a number", "namespaces: 3\n",
			`invalid namespaces "3" (from config file FILE line 1): want a list of namespaces, each "- name: NAME" with its settings; not a single value`},
		{"namespaces a mapping", "namespaces:\n  chat:\n    history_size: 10\n",
			`invalid namespaces "{chat: {history_size: 10}}" (from config file FILE line 2): want a list of namespaces, each "- name: NAME" with its settings; not a mapping`},
		{"namespace a word", "namespaces:\n  - chat\n",
			`invalid namespaces "chat" (from config file FILE line 2): want a namespace's settings, such as "- name: chat", then history_size and the others on lines below; not a single value`},
		{"unknown namespace key", "namespaces:\n  - name: chat\n    histroy_size: 10\n",
			`unknown setting histroy_size in namespace "chat" (config file FILE line 3): did you mean history_size? A namespace takes name, history_size, history_ttl, presence, join_leave, allow_subscribe, allow_publish, allow_presence, allow_history, channel_events, member_events, publish_events, delta, overflow`},
		{"namespace key before its name", "namespaces:\n  - histroy_size: 10\n    name: chat\n",
			`unknown setting histroy_size in namespace "chat" (config file FILE line 2): did you mean history_size? A namespace takes name, history_size, history_ttl, presence, join_leave, allow_subscribe, allow_publish, allow_presence, allow_history, channel_events, member_events, publish_events, delta, overflow`},
		{"history size a word", "namespaces:\n  - name: chat\n    history_size: lots\n",
			`invalid history_size of namespace "chat" "lots" (from config file FILE line 3): want a whole number`},
		{"history size negative", "namespaces:\n  - name: chat\n    history_size: -5\n",
			`invalid history_size of namespace "chat" "-5" (from config file FILE line 3): must not be negative`},
		{"history size too large", "namespaces:\n  - name: chat\n    history_size: 99999999999999999999\n",
			`invalid history_size of namespace "chat" "99999999999999999999" (from config file FILE line 3): too large: at most 9223372036854775807`},
		{"delta unknown", "namespaces:\n  - name: chat\n    history_size: 5\n    delta: xdelta\n",
			`invalid delta of namespace "chat" "xdelta" (from config file FILE line 4): want fossil or none`},
		{"overflow unknown", "namespaces:\n  - name: px\n    overflow: newest\n",
			`invalid overflow of namespace "px" "newest" (from config file FILE line 3): want disconnect, drop_oldest or conflate`},
		{"history ttl a word", "namespaces:\n  - name: chat\n    history_ttl: soon\n",
			`invalid history_ttl of namespace "chat" "soon" (from config file FILE line 3): want a duration such as 500ms, 30s or 1m30s`},
		{"history ttl negative", "namespaces:\n  - name: chat\n    history_ttl: -1m\n",
			`invalid history_ttl of namespace "chat" "-1m" (from config file FILE line 3): must not be negative`},
		{"presence a word", "namespaces:\n  - name: chat\n    presence: maybe\n",
			`invalid presence of namespace "chat" "maybe" (from config file FILE line 3): want true or false`},
		{"join_leave a list", "namespaces:\n  - name: chat\n    join_leave: [yes]\n",
			`invalid join_leave of namespace "chat" "[yes]" (from config file FILE line 3): want true or false; not a list`},
		{"name a list", "namespaces:\n  - name: [chat]\n",
			`invalid name of a namespace "[chat]" (from config file FILE line 2): want a namespace name such as chat; not a list`},
		{"name with a colon", "namespaces:\n  - name: \"a:b\"\n",
			`invalid name of a namespace "a:b" (from config file FILE line 2): want 1-255 of A-Z a-z 0-9 _ - . @ # , = / ! (no ':': a namespace is the part of a channel name before its first ':'), or "*" for every namespace not listed`},
		{"namespace twice", "namespaces:\n  - name: chat\n  - name: \"\"\n  - name: chat\n",
			`invalid name of a namespace "chat" (from config file FILE line 4): namespace "chat" is configured twice (first at line 2)`},
		{"namespace key twice", "namespaces:\n  - name: chat\n    history_size: 1\n    history_size: 2\n",
			`invalid history_size of namespace "chat" "2" (from config file FILE line 4): set twice in the namespace (first at line 3)`},
		{"permission a word", "namespaces:\n  - name: chat\n    allow_publish: everyone\n",
			`invalid allow_publish of namespace "chat" "everyone" (from config file FILE line 3): want anyone, authenticated, granted or nobody`},
		{"permission a list", "namespaces:\n  - name: chat\n    allow_history: [anyone]\n",
			`invalid allow_history of namespace "chat" "[anyone]" (from config file FILE line 3): want anyone, authenticated, granted or nobody; not a list`},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := writeFile(t, c.file)
			_, err := parseServeConfig([]string{"--config", path}, nil, io.Discard)
			if err == nil {
				t.Fatal("accepted")
			}
			want := strings.ReplaceAll(c.want, "FILE", path)
			if got := err.Error(); got != want {
				t.Errorf("error\n %s\nwant\n %s", got, want)
			}
			if m := goTypes.FindString(strings.ReplaceAll(err.Error(), path, "FILE")); m != "" {
				t.Errorf("error %q shows a Go type or YAML tag (%q)", err, m)
			}
			var se *SettingError
			if strings.HasPrefix(c.want, "invalid ") && !errors.As(err, &se) {
				t.Errorf("error %v is not a *SettingError", err)
			}
		})
	}
}

// TestConfigFileAccepts: what the file parser must keep accepting — YAML
// 1.1 booleans in namespaces (yes/no, as the YAML library allowed), empty
// values meaning the default, anchors, and an empty or comment-only file.
func TestConfigFileAccepts(t *testing.T) {
	t.Parallel()
	cfg, err := parseServeConfig([]string{"--config", writeFile(t, `# comment
ping: &p 5s
`)}, nil, io.Discard)
	if err == nil {
		t.Fatalf("unknown key accepted: %+v", cfg)
	}
	cfg, err = parseServeConfig([]string{"--config", writeFile(t, `ping_interval: &p 5s
pong_timeout: *p
namespaces:
  - name: chat
    presence: yes
    join_leave: off
    history_size:
    history_ttl: 1m
  - name:
    overflow: Conflate
`)}, nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PingInterval.String() != "5s" || cfg.PongTimeout.String() != "5s" || len(cfg.Namespaces) != 2 ||
		!cfg.Namespaces[0].Presence || cfg.Namespaces[0].JoinLeave || cfg.Namespaces[0].HistoryTTL.String() != "1m0s" ||
		cfg.Namespaces[1].Name != "" || cfg.Namespaces[1].Overflow != herald.OverflowConflate || cfg.Namespaces[0].Overflow != herald.OverflowDisconnect {
		t.Fatalf("got %+v", cfg)
	}
	for _, body := range []string{"", "# only a comment\n", "~\n", "---\n"} {
		if _, err := parseServeConfig([]string{"--config", writeFile(t, body)}, nil, io.Discard); err != nil {
			t.Errorf("%q: %v", body, err)
		}
	}
}
