package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// The YAML short tags the decoder tells apart.
const (
	nullTag  = "!!null"
	boolTag  = "!!bool"
	intTag   = "!!int"
	floatTag = "!!float"
	strTag   = "!!str"
)

// The decoder visits each node of a file without aliases about once, and
// a file has fewer nodes than bytes. Aliases can make it visit a node many
// times; maxNodes bounds the visits so that work grows with the file, not
// with its square.
func maxNodes(fileSize int) int { return 1<<16 + 2*fileSize }

// A decoder walks a YAML node tree into a Config, collecting every problem
// instead of stopping at the first.
type decoder struct {
	file   string
	errs   Errors
	pos    map[string]int         // key path → line, for Validate
	bad    map[string]bool        // key paths already reported
	merged map[*yaml.Node][]field // mapping → its fields after merge keys
	busy   map[*yaml.Node]bool    // mappings whose merges are being expanded
	nodes  int                    // nodes visited, against limit
	limit  int                    // maxNodes of the file
	// dropped counts the problems past maxProblems.
	dropped int
	// hopeless is set when the document is not a mapping or is too
	// big: checking the values that could be decoded would only add
	// noise.
	hopeless bool
	null     *yaml.Node // stands in for every node once nodes is spent
}

// A field is one key of a mapping and its value.
type field struct {
	name string
	key  *yaml.Node
	val  *yaml.Node
}

func newDecoder(file string, size int) *decoder {
	return &decoder{
		file:   file,
		limit:  maxNodes(size),
		pos:    make(map[string]int),
		bad:    make(map[string]bool),
		merged: make(map[*yaml.Node][]field),
		busy:   make(map[*yaml.Node]bool),
		null:   &yaml.Node{Kind: yaml.ScalarNode, Tag: nullTag},
	}
}

func (d *decoder) errorf(line int, key, format string, args ...any) {
	if d.nodes > d.limit {
		return // everything is null now: not the file's problem
	}
	if key != "" {
		d.bad[key] = true
	}
	if len(d.errs) >= maxProblems {
		d.dropped++
		return
	}
	d.errs = append(d.errs, &Error{File: d.file, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// failed reports whether key, or a key that contains it, already has a
// problem, so that Validate does not report its consequence again (a name
// that was a list is not also "missing").
func (d *decoder) failed(key string) bool {
	for k := key; ; k = parentKey(k) {
		if d.bad[k] {
			return true
		}
		if k == "" {
			return false
		}
	}
}

// resolve follows an alias to its anchored node and counts the visit. Once
// the budget is spent it reports that once and returns a null node, which
// every caller treats as "not set".
func (d *decoder) resolve(n *yaml.Node) *yaml.Node {
	line := n.Line
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if d.nodes++; d.nodes == d.limit {
		d.errorf(line, "", "aliases expand to more than %d values", d.limit)
		d.hopeless = true
		d.nodes++
	}
	if n == nil || d.nodes > d.limit {
		return d.null
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == nullTag
}

// describe names the type and, for a scalar, the value of n, for messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch tag := n.ShortTag(); tag {
		case nullTag:
			return "null"
		case boolTag:
			return "boolean " + n.Value
		case intTag:
			return "integer " + n.Value
		case floatTag:
			return "number " + n.Value
		case strTag:
			return "string " + quote(n.Value)
		default:
			return tag + " " + quote(n.Value)
		}
	}
	return "an unexpected YAML node"
}

// quote quotes s for a message, shortened if it is long.
func quote(s string) string {
	const max = 64
	if len(s) <= max {
		return fmt.Sprintf("%q", s)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%q...", s[:cut])
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func index(path string, i int) string {
	return fmt.Sprintf("%s[%d]", path, i)
}

// mapping returns the known fields of the mapping n, recording their lines
// and reporting unknown keys. It returns nil if n is null or not a mapping;
// want describes what n should be for that message.
func (d *decoder) mapping(n *yaml.Node, path, want string, known ...string) []field {
	n = d.resolve(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n.Line, path, "want %s, got %s", want, describe(n))
		return nil
	}
	var out []field
	for _, f := range d.collect(n, path, 0) {
		key := join(path, f.name)
		if path == "" && strings.HasPrefix(f.name, "x-") {
			continue // a place for anchors, as in Compose files
		}
		if !slices.Contains(known, f.name) {
			d.errorf(f.key.Line, key, "unknown key%s", suggest(f.name, known))
			continue
		}
		d.pos[key] = f.key.Line
		out = append(out, f)
	}
	return out
}

// maxMergeDepth bounds merge keys inside merged mappings.
const maxMergeDepth = 32

// collect returns the keys of mapping n in order, with merge keys (<<)
// expanded: keys written in n win over merged ones, and earlier merged
// mappings win over later ones. It reports repeated keys. Each mapping is
// expanded once, however often it is merged.
func (d *decoder) collect(n *yaml.Node, path string, depth int) []field {
	if fs, ok := d.merged[n]; ok {
		return fs
	}
	d.busy[n] = true
	defer delete(d.busy, n)
	var (
		fs     []field
		at     = make(map[string]int)
		merges []*yaml.Node
	)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := d.resolve(n.Content[i]), n.Content[i+1]
		switch {
		case k.Kind != yaml.ScalarNode:
			d.errorf(k.Line, path, "want a key, got %s", describe(k))
		case k.Value == "<<" && k.ShortTag() == "!!merge":
			merges = append(merges, v)
		case hasKey(at, k.Value):
			d.errorf(k.Line, join(path, k.Value), "repeated key (first at line %d)", fs[at[k.Value]].key.Line)
		default:
			at[k.Value] = len(fs)
			fs = append(fs, field{k.Value, k, v})
		}
	}
	for _, m := range merges {
		line := m.Line
		m = d.resolve(m)
		srcs := []*yaml.Node{m}
		if m.Kind == yaml.SequenceNode {
			srcs = srcs[:0]
			for _, s := range m.Content {
				srcs = append(srcs, d.resolve(s))
			}
		}
		for _, s := range srcs {
			switch {
			case s.Kind != yaml.MappingNode:
				d.errorf(line, path, "merge key << wants a mapping or a list of mappings, got %s", describe(s))
			case d.busy[s] || depth >= maxMergeDepth:
				d.errorf(line, path, "merge key << includes itself, or nests too deep")
			default:
				for _, f := range d.collect(s, path, depth+1) {
					if !hasKey(at, f.name) {
						at[f.name] = len(fs)
						fs = append(fs, f)
					}
				}
			}
		}
	}
	d.merged[n] = fs
	return fs
}

func hasKey(m map[string]int, k string) bool {
	_, ok := m[k]
	return ok
}

// list returns the items of the sequence n, unresolved, or nil if n is
// null or not a sequence.
func (d *decoder) list(n *yaml.Node, path, want string) []*yaml.Node {
	n = d.resolve(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		d.errorf(n.Line, path, "want a list of %s, got %s", want, describe(n))
		return nil
	}
	if len(n.Content) == 0 {
		return []*yaml.Node{} // an empty list, as distinct from null
	}
	return n.Content
}

// scalar resolves n and returns it if it is a scalar other than null. It
// reports other nodes as not being want.
func (d *decoder) scalar(n *yaml.Node, path, want string) (*yaml.Node, bool) {
	n = d.resolve(n)
	if isNull(n) {
		return nil, false
	}
	if n.Kind != yaml.ScalarNode {
		d.errorf(n.Line, path, "want %s, got %s", want, describe(n))
		return nil, false
	}
	return n, true
}

// str decodes any scalar as the text written.
func (d *decoder) str(n *yaml.Node, path string, out *string) {
	if s, ok := d.scalar(n, path, "a string"); ok {
		*out = s.Value
	}
}

func (d *decoder) boolean(n *yaml.Node, path string, out *bool) {
	s, ok := d.scalar(n, path, "true or false")
	if !ok {
		return
	}
	if s.ShortTag() != boolTag || s.Decode(out) != nil {
		hint := ""
		switch strings.ToLower(s.Value) {
		case "yes", "no", "on", "off", "y", "n", "true", "false":
			hint = " (YAML 1.2 has only true and false, unquoted)"
		}
		d.errorf(s.Line, path, "want true or false, got %s%s", describe(s), hint)
	}
}

// integer decodes an integer and reports whether it set *out.
func (d *decoder) integer(n *yaml.Node, path string, out *int) bool {
	s, ok := d.scalar(n, path, "an integer")
	if !ok {
		return false
	}
	if s.ShortTag() != intTag {
		d.errorf(s.Line, path, "want an integer, got %s", describe(s))
		return false
	}
	if s.Decode(out) != nil {
		d.errorf(s.Line, path, "integer %s is out of range", s.Value)
		return false
	}
	return true
}

func (d *decoder) size(n *yaml.Node, path string, out *int64) {
	s, ok := d.scalar(n, path, `a size such as 4096 or "512MiB"`)
	if !ok {
		return
	}
	switch s.ShortTag() {
	case intTag:
		if s.Decode(out) != nil {
			d.errorf(s.Line, path, "integer %s is out of range", s.Value)
		}
	case strTag:
		v, err := ParseSize(s.Value)
		if err != nil {
			d.errorf(s.Line, path, "%v", err)
			return
		}
		*out = v
	default:
		d.errorf(s.Line, path, `want a size such as 4096 or "512MiB", got %s`, describe(s))
	}
}

func (d *decoder) duration(n *yaml.Node, path string, out *time.Duration) {
	s, ok := d.scalar(n, path, `a duration such as "30s"`)
	if !ok {
		return
	}
	switch s.ShortTag() {
	case intTag:
		var v int64
		if s.Decode(&v) != nil || v != 0 {
			d.errorf(s.Line, path, `want a duration with a unit, such as "%ss", got integer %s`, s.Value, s.Value)
			return
		}
		*out = 0
	case strTag:
		v, err := time.ParseDuration(s.Value)
		if err != nil {
			d.errorf(s.Line, path, `%s is not a duration (want e.g. "30s" or "5m")`, quote(s.Value))
			return
		}
		*out = v
	default:
		d.errorf(s.Line, path, `want a duration such as "30s", got %s`, describe(s))
	}
}

// strings decodes a list of scalars. An item that is not a scalar is
// reported and kept as "", so that later items keep their index.
func (d *decoder) strings(n *yaml.Node, path, want string, out *[]string) {
	items := d.list(n, path, want)
	if items == nil {
		return
	}
	*out = nil // [] is the same as no list, but replaces the default
	for i, it := range items {
		key := index(path, i)
		d.pos[key] = it.Line
		var s string
		d.str(it, key, &s)
		*out = append(*out, s)
	}
}

func (d *decoder) config(n *yaml.Node, c *Config) {
	if n == nil {
		return
	}
	if r := d.resolve(n); !isNull(r) {
		d.pos[""] = r.Line
		d.hopeless = r.Kind != yaml.MappingNode
	}
	for _, f := range d.mapping(n, "", "a mapping of settings starting with version: 1",
		"version", "listen", "discovery", "limits", "log", "tls", "exports") {
		switch key := f.name; key {
		case "version":
			c.versionSet = d.integer(f.val, key, &c.Version)
		case "listen":
			d.strings(f.val, key, `addresses such as ":10809"`, &c.Listen)
		case "discovery":
			d.discovery(f.val, key, &c.Discovery)
		case "limits":
			d.limits(f.val, key, &c.Limits)
		case "log":
			d.log(f.val, key, &c.Log)
		case "tls":
			d.tls(f.val, key, &c.TLS)
		case "exports":
			d.exports(f.val, key, &c.Exports)
		}
	}
}

func (d *decoder) discovery(n *yaml.Node, path string, out *Discovery) {
	for _, f := range d.mapping(n, path, "a mapping",
		"enabled", "backend", "interfaces", "board", "instance") {
		key := join(path, f.name)
		switch f.name {
		case "enabled":
			d.boolean(f.val, key, &out.Enabled)
		case "backend":
			d.str(f.val, key, &out.Backend)
		case "interfaces":
			d.strings(f.val, key, "interface names", &out.Interfaces)
		case "board":
			d.str(f.val, key, &out.Board)
		case "instance":
			d.str(f.val, key, &out.Instance)
		}
	}
}

func (d *decoder) limits(n *yaml.Node, path string, out *Limits) {
	for _, f := range d.mapping(n, path, "a mapping",
		"max_connections", "handshake_timeout", "max_in_flight", "max_payload") {
		key := join(path, f.name)
		switch f.name {
		case "max_connections":
			d.integer(f.val, key, &out.MaxConnections)
		case "handshake_timeout":
			d.duration(f.val, key, &out.HandshakeTimeout)
		case "max_in_flight":
			d.integer(f.val, key, &out.MaxInFlight)
		case "max_payload":
			d.size(f.val, key, &out.MaxPayload)
		}
	}
}

func (d *decoder) log(n *yaml.Node, path string, out *Log) {
	for _, f := range d.mapping(n, path, "a mapping", "level", "format") {
		key := join(path, f.name)
		switch f.name {
		case "level":
			d.str(f.val, key, &out.Level)
		case "format":
			d.str(f.val, key, &out.Format)
		}
	}
}

func (d *decoder) tls(n *yaml.Node, path string, out *TLS) {
	for _, f := range d.mapping(n, path, "a mapping", "mode", "cert", "key", "ca") {
		key := join(path, f.name)
		switch f.name {
		case "mode":
			d.str(f.val, key, &out.Mode)
		case "cert":
			d.str(f.val, key, &out.Cert)
		case "key":
			d.str(f.val, key, &out.Key)
		case "ca":
			d.str(f.val, key, &out.CA)
		}
	}
}

// exports decodes the list of exports. An item that is not a mapping is
// reported and kept as an export with defaults, so that later exports keep
// their index in messages.
func (d *decoder) exports(n *yaml.Node, path string, out *[]Export) {
	items := d.list(n, path, "exports")
	for i, it := range items {
		key := index(path, i)
		d.pos[key] = it.Line
		e := DefaultExport()
		e.Line = it.Line
		d.export(it, key, &e)
		*out = append(*out, e)
	}
}

func (d *decoder) export(n *yaml.Node, path string, out *Export) {
	fields := d.mapping(n, path, "a mapping with name and path",
		"name", "path", "description", "readonly", "size", "offset",
		"copy_on_write", "overlay", "multifile", "allow",
		"max_connections", "idle_timeout", "flush", "fua", "trim", "allow_in_use", "tls")
	for _, f := range fields {
		key := join(path, f.name)
		switch f.name {
		case "name":
			d.str(f.val, key, &out.Name)
		case "path":
			d.str(f.val, key, &out.Path)
		case "description":
			d.str(f.val, key, &out.Description)
		case "readonly":
			d.boolean(f.val, key, &out.ReadOnly)
		case "size":
			d.size(f.val, key, &out.Size)
		case "offset":
			d.size(f.val, key, &out.Offset)
		case "copy_on_write":
			d.copyOnWrite(f.val, key, &out.CopyOnWrite)
		case "overlay":
			d.str(f.val, key, &out.Overlay)
		case "multifile":
			d.boolean(f.val, key, &out.Multifile)
		case "allow":
			d.allow(f.val, key, &out.Allow)
		case "max_connections":
			d.integer(f.val, key, &out.MaxConnections)
		case "idle_timeout":
			d.duration(f.val, key, &out.IdleTimeout)
		case "flush":
			d.boolean(f.val, key, &out.Flush)
		case "fua":
			d.boolean(f.val, key, &out.FUA)
		case "trim":
			d.boolean(f.val, key, &out.Trim)
		case "allow_in_use":
			d.boolean(f.val, key, &out.AllowInUse)
		case "tls":
			d.str(f.val, key, &out.TLS)
		}
	}
}

// copyOnWrite takes true as "connection" and false as off; strings are
// checked by Validate.
func (d *decoder) copyOnWrite(n *yaml.Node, path string, out *string) {
	const want = "connection, persistent, true or false"
	s, ok := d.scalar(n, path, want)
	if !ok {
		return
	}
	switch s.ShortTag() {
	case boolTag:
		var on bool
		if s.Decode(&on) != nil {
			d.errorf(s.Line, path, "want %s, got %s", want, describe(s))
			return
		}
		*out = ""
		if on {
			*out = CopyOnWriteConnection
		}
	case strTag:
		*out = s.Value
	default:
		d.errorf(s.Line, path, "want %s, got %s", want, describe(s))
	}
}

// allow decodes CIDR prefixes and bare addresses. An item that does not
// parse is reported and kept as the zero Prefix, so that later items keep
// their index.
func (d *decoder) allow(n *yaml.Node, path string, out *[]netip.Prefix) {
	items := d.list(n, path, `CIDR prefixes such as "10.0.0.0/8"`)
	if items == nil {
		return
	}
	*out = nil
	for i, it := range items {
		key := index(path, i)
		d.pos[key] = it.Line
		var p netip.Prefix
		var s string
		d.str(it, key, &s)
		if !d.bad[key] {
			var err error
			if p, err = parsePrefix(s); err != nil {
				d.errorf(d.pos[key], key, "%v", err)
			}
		}
		*out = append(*out, p)
	}
}

// parsePrefix parses a CIDR prefix, or a bare address as the prefix of
// that one address.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%s is not a CIDR prefix (want e.g. 10.0.0.0/8)", quote(s))
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%s is not an address or CIDR prefix (want e.g. 10.0.0.0/8 or 10.0.0.7)", quote(s))
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%s has a zone; allow matches addresses without one", quote(s))
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// suggest returns " (did you mean "x"?)" for the known key closest to an
// unknown one, or "".
func suggest(name string, known []string) string {
	norm := func(s string) string {
		return strings.NewReplacer("_", "", "-", "", " ", "").Replace(strings.ToLower(s))
	}
	best, bestDist := "", 3
	for _, k := range known {
		if a, b := norm(k), norm(name); a == b || len(a) >= 4 && len(b) >= 4 && (strings.HasPrefix(a, b) || strings.HasPrefix(b, a)) {
			return fmt.Sprintf(" (did you mean %q?)", k)
		}
		if dist := editDistance(name, k); dist < bestDist {
			best, bestDist = k, dist
		}
	}
	if best == "" {
		return fmt.Sprintf(" (want one of %s)", strings.Join(known, ", "))
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance of two short strings, in bytes.
// It gives up early on long ones, which are never a typo of a known key.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return len(a) + len(b)
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
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
