package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/protocol"
)

// The config file.
//
// The file is read into YAML nodes and walked here, rather than decoded
// into Go structs, for two reasons. Every value goes through the parser of
// its setting (settings in config.go), so that it means the same as the
// same text in a flag or a variable. And every mistake is reported in the
// file's terms: the key, the file and line, and what is wanted in words
// ("want a whole number"), where a decoder would name Go's types ("cannot
// unmarshal !!str into int", "field x not found in type main.fileSettings").
// Unknown keys are an error, so that a typo cannot silently leave a setting
// at its default; so is a key written twice.

// applyConfigFile applies the settings present in the YAML file at path,
// and records in src where each came from.
func applyConfigFile(cfg *Config, path string, src sources) error {
	root, err := readConfigFile(path)
	if err != nil || root == nil {
		return err
	}
	f := configFile{path: path}
	first := make(map[string]int) // the line of each key
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, raw := root.Content[i], root.Content[i+1]
		v := resolve(raw)
		name := k.Value
		var s *setting
		if name != "namespaces" && name != "pusher_apps" {
			if s = lookupSettingByName(name); s == nil || k.Kind != yaml.ScalarNode {
				return unknownSetting(k, path)
			}
		}
		source := f.source(raw.Line)
		if line, dup := first[name]; dup {
			err := fmt.Errorf("set twice in the file (first at line %d)", line)
			if s == nil {
				return &SettingError{Setting: name, Source: source, Value: render(v), Err: err}
			}
			return settingError(s, source, render(v), err)
		}
		first[name] = k.Line
		if isNull(v) {
			continue // written with no value: keep the default
		}
		if s == nil && name == "pusher_apps" {
			if cfg.PusherApps, err = f.pusherApps(v, raw.Line); err != nil {
				return err
			}
			continue
		}
		if s == nil {
			if cfg.Namespaces, err = f.namespaces(v, raw.Line); err != nil {
				return err
			}
			continue
		}
		if err := applyNode(cfg, s, v, source, f); err != nil {
			return err
		}
		src[name] = source
	}
	return nil
}

// unknownSetting is the error of a key of the file that names no setting,
// with the setting it likely meant.
func unknownSetting(k *yaml.Node, path string) error {
	hint := "herald help serve lists every setting"
	if guess := didYouMean(k.Value, settingNames()); guess != "" {
		hint = guess + " (" + hint + ")"
	}
	return fmt.Errorf("unknown setting %s (config file %s line %d): %s", render(k), path, k.Line, hint)
}

// readConfigFile reads the YAML file at path and returns its mapping of
// settings, or nil if it holds none (it is empty, comments only, or null).
func readConfigFile(path string) (*yaml.Node, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("failed to read config file: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("failed to parse config file %s: invalid YAML: %s", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if len(doc.Content) == 0 {
		return nil, nil // empty, or comments only
	}
	root := resolve(doc.Content[0])
	if isNull(root) {
		return nil, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf(`failed to parse config file %s: line %d: want settings as "key: value" lines; not %s`, path, root.Line, shape(root))
	}
	return root, nil
}

// configFile is the file being read, for the source of each value.
type configFile struct{ path string }

func (f configFile) source(line int) string {
	return fmt.Sprintf("config file %s line %d", f.path, line)
}

// applyNode sets s from its value in the file: one value, or for a list
// setting a YAML list of values.
func applyNode(cfg *Config, s *setting, n *yaml.Node, source string, f configFile) error {
	switch {
	case n.Kind == yaml.ScalarNode:
		if err := s.set(cfg, n.Value); err != nil {
			return settingError(s, source, n.Value, err)
		}
	case n.Kind == yaml.SequenceNode && s.setList != nil:
		items := make([]string, 0, len(n.Content))
		for _, raw := range n.Content {
			it := resolve(raw)
			if it.Kind != yaml.ScalarNode {
				return settingError(s, f.source(raw.Line), render(it),
					fmt.Errorf("want %s, one per item; not %s within the list", s.want, shape(it)))
			}
			items = append(items, it.Value)
		}
		if err := s.setList(cfg, items); err != nil {
			return settingError(s, source, strings.Join(items, ","), err)
		}
	default:
		return settingError(s, source, render(n), fmt.Errorf("want %s; not %s", s.want, shape(n)))
	}
	return nil
}

// namespaceKeys are the keys of a namespace in the file, with what each
// wants and how it is set; see herald.Namespace for their meaning.
var namespaceKeys = []struct {
	key, want string
	set       func(ns *herald.Namespace, v string) error
}{
	{"name", "a namespace name such as chat", nil}, // read first, by namespace
	{"history_size", "a whole number", nsKey(parseInt, func(ns *herald.Namespace) *int { return &ns.HistorySize })},
	{"history_ttl", wantDuration, nsKey(parseDuration, func(ns *herald.Namespace) *time.Duration { return &ns.HistoryTTL })},
	{"presence", "true or false", nsKey(parseBool, func(ns *herald.Namespace) *bool { return &ns.Presence })},
	{"join_leave", "true or false", nsKey(parseBool, func(ns *herald.Namespace) *bool { return &ns.JoinLeave })},
	{"allow_subscribe", wantPermission, nsKey(parsePermission, func(ns *herald.Namespace) *herald.Permission { return &ns.AllowSubscribe })},
	{"allow_publish", wantPermission, nsKey(parsePermission, func(ns *herald.Namespace) *herald.Permission { return &ns.AllowPublish })},
	{"allow_presence", wantPermission, nsKey(parsePermission, func(ns *herald.Namespace) *herald.Permission { return &ns.AllowPresence })},
	{"allow_history", wantPermission, nsKey(parsePermission, func(ns *herald.Namespace) *herald.Permission { return &ns.AllowHistory })},
	{"channel_events", "true or false", nsKey(parseBool, func(ns *herald.Namespace) *bool { return &ns.ChannelEvents })},
	{"member_events", "true or false", nsKey(parseBool, func(ns *herald.Namespace) *bool { return &ns.MemberEvents })},
	{"publish_events", "true or false", nsKey(parseBool, func(ns *herald.Namespace) *bool { return &ns.PublishEvents })},
	{"delta", wantDelta, nsKey(parseDelta, func(ns *herald.Namespace) *herald.DeltaType { return &ns.Delta })},
	{"overflow", "disconnect, drop_oldest or conflate", nsKey(parseOverflow, func(ns *herald.Namespace) *herald.OverflowPolicy { return &ns.Overflow })},
}

func parseOverflow(v string) (herald.OverflowPolicy, error) {
	p, err := herald.ParseOverflowPolicy(strings.ToLower(strings.TrimSpace(v)))
	if err != nil {
		return 0, errors.New("want disconnect, drop_oldest or conflate")
	}
	return p, nil
}

// nsKey sets a namespace's field from its value in the file, read by parse.
func nsKey[T any](parse func(string) (T, error), field func(*herald.Namespace) *T) func(*herald.Namespace, string) error {
	return func(ns *herald.Namespace, v string) error {
		x, err := parse(v)
		if err != nil {
			return err
		}
		*field(ns) = x
		return nil
	}
}

const wantDelta = "fossil or none"

func parseDelta(v string) (herald.DeltaType, error) {
	switch d := strings.ToLower(strings.TrimSpace(v)); d {
	case "none", "":
		return herald.DeltaNone, nil
	case string(herald.DeltaFossil):
		return herald.DeltaFossil, nil
	}
	return "", errors.New("want " + wantDelta)
}

const wantPermission = "anyone, authenticated, granted or nobody"

func parsePermission(v string) (herald.Permission, error) {
	switch p := herald.Permission(strings.ToLower(strings.TrimSpace(v))); p {
	case herald.PermAnyone, herald.PermAuthenticated, herald.PermGranted, herald.PermNobody:
		return p, nil
	}
	return "", errors.New("want " + wantPermission)
}

// namespaces reads the file's namespaces list (at line).
func (f configFile) namespaces(n *yaml.Node, line int) ([]herald.Namespace, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, &SettingError{Setting: "namespaces", Source: f.source(line), Value: render(n),
			Err: errors.New(`want a list of namespaces, each "- name: NAME" with its settings; not ` + shape(n))}
	}
	var list []herald.Namespace
	first := make(map[string]int) // the line of each namespace's name
	for _, raw := range n.Content {
		e := resolve(raw)
		if isNull(e) {
			list = append(list, herald.Namespace{}) // "-" alone: the namespace ""
			continue
		}
		if e.Kind != yaml.MappingNode {
			return nil, &SettingError{Setting: "namespaces", Source: f.source(raw.Line), Value: render(e),
				Err: errors.New(`want a namespace's settings, such as "- name: chat", then history_size and the others on lines below; not ` + shape(e))}
		}
		ns, nameLine, err := f.namespace(e)
		if err != nil {
			return nil, err
		}
		// herald.New refuses these too, but without the line.
		if line, dup := first[ns.Name]; dup {
			return nil, &SettingError{Setting: "name of a namespace", Source: f.source(nameLine), Value: ns.Name,
				Err: fmt.Errorf("namespace %q is configured twice (first at line %d)", ns.Name, line)}
		}
		first[ns.Name] = nameLine
		list = append(list, ns)
	}
	return list, nil
}

// namespace reads one entry of the namespaces list, and returns the line
// of its name.
func (f configFile) namespace(e *yaml.Node) (ns herald.Namespace, nameLine int, err error) {
	// The name first, so that errors about the other keys can say which
	// namespace they are in, wherever the name is written.
	if ns.Name, nameLine, err = f.namespaceName(e); err != nil {
		return ns, 0, err
	}
	keys := make([]string, len(namespaceKeys))
	for i, nk := range namespaceKeys {
		keys[i] = nk.key
	}
	first := make(map[string]int)
	for i := 0; i+1 < len(e.Content); i += 2 {
		k, raw := e.Content[i], e.Content[i+1]
		v := resolve(raw)
		idx := -1
		for j, nk := range namespaceKeys {
			if k.Kind == yaml.ScalarNode && nk.key == k.Value {
				idx = j
			}
		}
		if idx < 0 {
			hint := "a namespace takes " + strings.Join(keys, ", ")
			if guess := didYouMean(k.Value, keys); guess != "" {
				hint = guess + " A namespace takes " + strings.Join(keys, ", ")
			}
			return ns, 0, fmt.Errorf("unknown setting %s in namespace %q (config file %s line %d): %s", render(k), ns.Name, f.path, k.Line, hint)
		}
		nk := namespaceKeys[idx]
		setting, source := fmt.Sprintf("%s of namespace %q", nk.key, ns.Name), f.source(raw.Line)
		if line, dup := first[nk.key]; dup {
			return ns, 0, &SettingError{Setting: setting, Source: source, Value: render(v),
				Err: fmt.Errorf("set twice in the namespace (first at line %d)", line)}
		}
		first[nk.key] = k.Line
		if nk.set == nil || isNull(v) {
			continue // the name, read above; or no value: the default
		}
		if v.Kind != yaml.ScalarNode {
			return ns, 0, &SettingError{Setting: setting, Source: source, Value: render(v),
				Err: fmt.Errorf("want %s; not %s", nk.want, shape(v))}
		}
		if err := nk.set(&ns, v.Value); err != nil {
			return ns, 0, &SettingError{Setting: setting, Source: source, Value: v.Value, Err: err}
		}
	}
	return ns, nameLine, nil
}

// namespaceName reads the name of the namespace e ("" if it has none), and
// returns the line of its name (of e, without one).
func (f configFile) namespaceName(e *yaml.Node) (name string, line int, err error) {
	line = e.Line
	for i := 0; i+1 < len(e.Content); i += 2 {
		k, raw := e.Content[i], e.Content[i+1]
		if k.Value != "name" {
			continue
		}
		line = raw.Line
		v := resolve(raw)
		switch {
		case isNull(v):
		case v.Kind != yaml.ScalarNode:
			return "", 0, &SettingError{Setting: "name of a namespace", Source: f.source(raw.Line), Value: render(v),
				Err: errors.New("want " + namespaceKeys[0].want + "; not " + shape(v))}
		case v.Value != "" && v.Value != herald.AnyNamespace && (!protocol.ValidChannel(v.Value) || strings.Contains(v.Value, ":")):
			// herald.New has the same rule; this says where.
			return "", 0, &SettingError{Setting: "name of a namespace", Source: f.source(raw.Line), Value: v.Value,
				Err: errors.New(`want 1-255 of A-Z a-z 0-9 _ - . @ # , = / ! (no ':': a namespace is the part of a channel name before its first ':'), or "*" for every namespace not listed`)}
		default:
			name = v.Value
		}
	}
	return name, line, nil
}

// resolve follows an alias (*name) to the node it names.
func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// isNull reports whether n is a key's missing value ("key:" alone, or ~).
func isNull(n *yaml.Node) bool {
	return n.Kind == 0 || (n.Kind == yaml.ScalarNode && n.Tag == "!!null")
}

// shape names the kind of a node in words, for "want X; not a list".
func shape(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return "a single value"
}

// render writes a node back as short flow-style YAML ([1, 2], {a: b}), to
// show in an error what was written.
func render(n *yaml.Node) string {
	var b strings.Builder
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		n = resolve(n)
		switch n.Kind {
		case yaml.SequenceNode:
			b.WriteByte('[')
			for i, c := range n.Content {
				if i > 0 {
					b.WriteString(", ")
				}
				walk(c)
			}
			b.WriteByte(']')
		case yaml.MappingNode:
			b.WriteByte('{')
			for i := 0; i+1 < len(n.Content); i += 2 {
				if i > 0 {
					b.WriteString(", ")
				}
				walk(n.Content[i])
				b.WriteString(": ")
				walk(n.Content[i+1])
			}
			b.WriteByte('}')
		default:
			b.WriteString(n.Value)
		}
	}
	walk(n)
	return truncate(b.String(), 100)
}

// settingNames lists the keys of the file: every setting, namespaces and
// pusher_apps.
func settingNames() []string {
	names := make([]string, 0, len(settings)+1)
	for _, s := range settings {
		names = append(names, s.name)
	}
	return append(names, "namespaces", "pusher_apps")
}

// lookupSettingByName returns the setting called name, or nil.
func lookupSettingByName(name string) *setting {
	for _, s := range settings {
		if s.name == name {
			return s
		}
	}
	return nil
}

// didYouMean suggests the name closest to a misspelt one ("did you mean
// max_connections?"), or returns "" when none is close.
func didYouMean(name string, names []string) string {
	best, bestDist := "", len(name)/4+2 // a few typos, more in a long name
	for _, n := range names {
		if d := editDistance(name, n); d < bestDist {
			best, bestDist = n, d
		}
	}
	if best == "" {
		return ""
	}
	return "did you mean " + best + "?"
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev, cur := make([]int, len(b)+1), make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
