package main

import (
	"cmp"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// problem is one thing wrong with a configuration file: where (a key path such as
// routes[1].verify.type, and its line once resolved) and what, with the fix.
type problem struct {
	path string
	line int // 0: resolved from path against the file's nodes
	msg  string
	// What validation would say at these paths only repeats this problem: at parent itself, and
	// at or below tree (the key that did not decode, or the one a misspelt key meant).
	parent, tree string
}

// repeats reports whether q, found by validation, only repeats d, found decoding.
func (d problem) repeats(q problem) bool {
	rest, ok := strings.CutPrefix(q.path, d.tree)
	return (d.parent != "" && q.path == d.parent) || (ok && (rest == "" || rest[0] == '.' || rest[0] == '['))
}

// problems collects every problem of a file, so that all of them are reported at once.
type problems []problem

func (p *problems) add(path, format string, args ...any) {
	*p = append(*p, problem{path: path, msg: fmt.Sprintf(format, args...)})
}

func (p *problems) addAt(path string, line int, format string, args ...any) {
	*p = append(*p, problem{path: path, line: line, msg: fmt.Sprintf(format, args...), tree: path})
}

// configError is every problem of one file, one per line, as FILE:LINE: key.path: what; fix.
type configError struct {
	file string
	list []problem
}

func (e *configError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d problem", e.file, len(e.list))
	if len(e.list) > 1 {
		b.WriteString("s")
	}
	b.WriteString(":")
	for _, p := range e.list {
		b.WriteString("\n")
		b.WriteString(p.String(e.file))
	}
	return b.String()
}

func (p problem) String(file string) string {
	s := file
	if p.line > 0 {
		s += ":" + strconv.Itoa(p.line)
	}
	if p.path != "" {
		s += ": " + p.path
	}
	return s + ": " + p.msg
}

// report resolves each problem's line, drops repeats, orders them by line and makes the error;
// nil when there is none.
func (p problems) report(file string, root *yaml.Node) error {
	if len(p) == 0 {
		return nil
	}
	var out []problem
	for _, q := range p {
		if q.line == 0 {
			q.line = lineOf(root, q.path)
		}
		if !slices.Contains(out, q) {
			out = append(out, q)
		}
	}
	slices.SortStableFunc(out, func(a, b problem) int { return cmp.Compare(a.line, b.line) })
	return &configError{file: file, list: out}
}

var pathSegment = regexp.MustCompile(`[^.\[\]]+|\[\d+\]`)

// lineOf is the line of the deepest node of path present in the file (a default is reported at
// the section it belongs to); 0 when the file has none of it.
func lineOf(root *yaml.Node, path string) int {
	n, line := root, 0
	for _, seg := range pathSegment.FindAllString(path, -1) {
		if n == nil {
			break
		}
		if n.Kind == yaml.AliasNode {
			n = n.Alias
		}
		var next *yaml.Node
		if i, err := strconv.Atoi(strings.Trim(seg, "[]")); err == nil && seg[0] == '[' {
			if n.Kind == yaml.SequenceNode && i < len(n.Content) {
				next = n.Content[i]
				line = next.Line
			}
		} else if n.Kind == yaml.MappingNode {
			for j := 0; j+1 < len(n.Content); j += 2 {
				if n.Content[j].Value == seg {
					next, line = n.Content[j+1], n.Content[j].Line
				}
			}
		}
		n = next
	}
	return line
}

// syntaxMsg is yaml.v3's syntax error without its "yaml: line N: " prefix, whose line is where
// the enclosing block began rather than the line at fault.
var syntaxMsg = regexp.MustCompile(`^yaml: (line \d+: )?`)

// decodeFile parses raw strictly into c: every unknown key, wrong type and repeated key is
// reported with its line and key path, not only the first. The nodes are kept so that later
// problems, known only by key path, can be given their line; nil when there is nothing to check.
func decodeFile(raw []byte, c *fileConfig) (*yaml.Node, problems) {
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		// The line at fault is the first after the longest start of the file that parses.
		lines := strings.SplitAfter(string(raw), "\n")
		bad := 1
		for n := len(lines) - 1; n > 0; n-- {
			if yaml.Unmarshal([]byte(strings.Join(lines[:n], "")), new(yaml.Node)) == nil {
				bad = n + 1
				break
			}
		}
		return nil, problems{{line: bad, msg: "YAML syntax: " + syntaxMsg.ReplaceAllString(err.Error(), "") +
			" (check the indentation and quoting of this line)"}}
	}
	if len(doc.Content) == 0 {
		return nil, problems{{msg: "the file is empty; start from config.example.yaml"}}
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, problems{{line: root.Line, msg: "want a mapping of settings (key: value lines) at the top; start from config.example.yaml"}}
	}
	var p problems
	decodeStruct(root, reflect.ValueOf(c).Elem(), "", &p)
	return root, p
}

// scalarParser is a config type written as one scalar that parses itself.
type scalarParser interface{ parseScalar(s string) error }

var durationType = reflect.TypeFor[time.Duration]()

// decodeNode decodes n into v, reporting problems under path.
func decodeNode(n *yaml.Node, v reflect.Value, path string, p *problems) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // key: with nothing after it: the default
	}
	if sp, ok := v.Addr().Interface().(scalarParser); ok && n.Kind == yaml.ScalarNode {
		if err := sp.parseScalar(n.Value); err != nil {
			p.addAt(path, n.Line, "%v", err)
		}
		return
	}
	want := func(what string) {
		p.addAt(path, n.Line, "want %s, got %s", what, describe(n))
	}
	switch {
	case v.Type() == durationType:
		d, err := parseDuration(n.Value)
		if n.Kind != yaml.ScalarNode || err != nil {
			want("a duration such as 90s, 5m or 72h")
			return
		}
		v.SetInt(int64(d))
	case v.Kind() == reflect.Pointer:
		elem := reflect.New(v.Type().Elem())
		decodeNode(n, elem.Elem(), path, p)
		v.Set(elem)
	case v.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			want("a mapping (key: value lines)")
			return
		}
		decodeStruct(n, v, path, p)
	case v.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			want("a list ([a, b] or lines starting with -)")
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, e := range n.Content {
			decodeNode(e, s.Index(i), fmt.Sprintf("%s[%d]", path, i), p)
		}
		v.Set(s)
	case v.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			want("a mapping (key: value lines)")
			return
		}
		m := reflect.MakeMap(v.Type())
		for i := 0; i+1 < len(n.Content); i += 2 {
			e := reflect.New(v.Type().Elem()).Elem()
			decodeNode(n.Content[i+1], e, join(path, n.Content[i].Value), p)
			m.SetMapIndex(reflect.ValueOf(n.Content[i].Value), e)
		}
		v.Set(m)
	case n.Kind != yaml.ScalarNode:
		want("a single value")
	case v.Kind() == reflect.String:
		v.SetString(n.Value)
	default: // bool, int, float: YAML's own reading of the scalar
		if err := n.Decode(v.Addr().Interface()); err != nil {
			want(map[reflect.Kind]string{reflect.Bool: "true or false", reflect.Int: "a whole number", reflect.Float64: "a number"}[v.Kind()])
		}
	}
}

// decodeStruct decodes a mapping into the struct's yaml-tagged fields.
func decodeStruct(n *yaml.Node, v reflect.Value, path string, p *problems) {
	fields := map[string]int{}
	var names []string
	for i := range v.NumField() {
		f := v.Type().Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if f.IsExported() && name != "" && name != "-" {
			fields[name] = i
			names = append(names, name)
		}
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		at := join(path, k.Value)
		if first, dup := seen[k.Value]; dup {
			p.addAt(at, k.Line, "given twice (first at line %d); keep one", first)
			continue
		}
		seen[k.Value] = k.Line
		idx, ok := fields[k.Value]
		if !ok {
			hint := suggest(k.Value, names, "")
			q := problem{path: at, line: k.Line, parent: path, tree: at,
				msg: "unknown key" + cmp.Or(hint, "; the keys here are "+strings.Join(names, ", "))}
			if meant, ok := strings.CutPrefix(hint, "; did you mean "); ok {
				q.tree = join(path, strings.TrimSuffix(meant, "?"))
			}
			*p = append(*p, q)
			continue
		}
		decodeNode(val, v.Field(idx), at, p)
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// describe names what a node holds, in the file's terms.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return strconv.Quote(n.Value)
}

// parseDuration reads Go's duration syntax; a bare 0 is allowed, other numbers need a unit.
func parseDuration(s string) (time.Duration, error) {
	if s == "0" {
		return 0, nil
	}
	return time.ParseDuration(s)
}

// suggest returns "; did you mean X?" for the option nearest to s (case, a typo or two), or
// otherwise; the error text continues with it.
func suggest(s string, options []string, otherwise string) string {
	best, bestD := "", 3
	for _, o := range options {
		if d := editDistance(strings.ToLower(s), strings.ToLower(o)); d < bestD && d < len(o) {
			best, bestD = o, d
		}
	}
	if best != "" {
		return "; did you mean " + best + "?"
	}
	return otherwise
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
