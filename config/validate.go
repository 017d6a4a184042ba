package config

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Validate checks every value of c and returns all problems as Errors, or
// nil. Parse calls it, so a Config from Parse or Load is valid; call it on
// a Config built in code (start from Default and DefaultExport). Problems
// name the lines Parse saw, and no line for values set in code. Validate
// does not change c.
func (c *Config) Validate() error {
	errs, dropped := c.validate(nil)
	return errs.limit(c.File, dropped).err()
}

type validator struct {
	c       *Config
	skip    func(key string) bool // problems already reported by Parse
	errs    Errors
	dropped int // problems past maxProblems
}

func (v *validator) errorf(line int, key, format string, args ...any) {
	if v.skip != nil && v.skip(key) {
		return
	}
	if len(v.errs) >= maxProblems {
		v.dropped++
		return
	}
	v.errs = append(v.errs, &Error{File: v.c.File, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// at reports a problem with a key outside the exports.
func (v *validator) at(key, format string, args ...any) {
	v.errorf(v.c.line(key), key, format, args...)
}

// validate returns the first maxProblems problems and how many more there
// are, leaving out those with keys that skip reports.
func (c *Config) validate(skip func(key string) bool) (Errors, int) {
	v := &validator{c: c, skip: skip}
	if c.Version != 1 {
		e := c.versionError()
		v.errorf(e.Line, e.Key, "%s", e.Msg)
	}
	v.listen()
	v.discovery()
	v.limits()
	v.log()
	v.tls()
	v.exports()
	v.errs.sortByLine()
	return v.errs, v.dropped
}

func (c *Config) versionError() *Error {
	e := &Error{File: c.File, Line: c.line("version"), Key: "version"}
	if c.Version == 0 && !c.versionSet {
		e.Msg = "missing (want version: 1)"
	} else {
		e.Msg = fmt.Sprintf("unsupported version %d (this boardnbd reads version 1)", c.Version)
	}
	return e
}

func (v *validator) listen() {
	if len(v.c.Listen) == 0 {
		v.at("listen", `is empty (leave it out for the default [":10809"])`)
	}
	seen := make(map[string]string)
	for i, addr := range v.c.Listen {
		key := index("listen", i)
		if msg := checkListen(addr); msg != "" {
			v.at(key, "%s", msg)
		} else if first, ok := seen[addr]; ok {
			v.at(key, "%s is listed twice (first as %s)", quote(addr), first)
		} else {
			seen[addr] = key
		}
	}
}

// checkListen returns what is wrong with a listen address, or "".
func checkListen(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf(`%s is not host:port (want e.g. ":10809", "0.0.0.0:10809" or "[::1]:10809")`, quote(addr))
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Sprintf("%s: port %s is not a number from 0 to 65535", quote(addr), quote(port))
	}
	if host == "" {
		return ""
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Is4() && !strings.Contains(addr, "[") || a.Is6() && strings.HasPrefix(addr, "[") {
			return ""
		}
	} else if isHostName(host) {
		return ""
	}
	return fmt.Sprintf("%s: host %s is not an IP address or host name (IPv6 goes in brackets: \"[::1]:10809\")", quote(addr), quote(host))
}

// isHostName reports whether s is shaped like a DNS host name. It does not
// resolve it.
func isHostName(s string) bool {
	if len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(s, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// Longest strings discovery can carry.
const (
	maxIfName = 15                  // IFNAMSIZ less the NUL
	maxBoard  = 255 - len("board=") // one TXT string
)

func (v *validator) discovery() {
	d := v.c.Discovery
	switch d.Backend {
	case "auto", "builtin", "avahi":
	default:
		v.at("discovery.backend", "unknown backend %s (want auto, builtin or avahi)", quote(d.Backend))
	}
	seen := make(map[string]bool)
	for i, name := range d.Interfaces {
		key := index("discovery.interfaces", i)
		switch {
		case name == "":
			v.at(key, "is empty")
		case len(name) > maxIfName:
			v.at(key, "%s is %d bytes long (interface names have at most %d)", quote(name), len(name), maxIfName)
		case strings.ContainsAny(name, "/ \t\n\x00"):
			v.at(key, "%s is not an interface name", quote(name))
		case seen[name]:
			v.at(key, "%s is listed twice", quote(name))
		}
		seen[name] = true
	}
	if len(d.Board) > maxBoard {
		v.at("discovery.board", "is %d bytes long (at most %d fit in a TXT record)", len(d.Board), maxBoard)
	}
	v.text("discovery.board", d.Board)
	v.text("discovery.instance", d.Instance)
}

// text reports a string that is not valid UTF-8 or holds a NUL.
func (v *validator) text(key, s string) {
	if !utf8.ValidString(s) {
		v.at(key, "%s is not valid UTF-8", quote(s))
	} else if strings.Contains(s, "\x00") {
		v.at(key, "%s contains a NUL byte", quote(s))
	}
}

func (v *validator) tls() {
	t := v.c.TLS
	switch mode := t.EffectiveMode(); mode {
	case TLSOff:
		if t.Cert != "" || t.Key != "" || t.CA != "" {
			v.at("tls.mode", "is off, but certificates are given (leave mode out, or set optional or required)")
		}
		return
	case TLSOptional, TLSRequired:
		if t.Cert == "" {
			v.at("tls.cert", "missing (tls mode %s needs the server's certificate, a PEM file)", mode)
		}
	default:
		v.at("tls.mode", "unknown mode %s (want off, optional or required)", quote(t.Mode))
	}
	if t.Cert != "" && t.Key == "" {
		v.at("tls.key", "missing (want the PEM private key of tls.cert)")
	}
	if t.Key != "" && t.Cert == "" {
		v.at("tls.cert", "missing (tls.key is set; want its certificate, a PEM file)")
	}
}

func (v *validator) limits() {
	l := v.c.Limits
	if l.MaxConnections < 1 {
		v.at("limits.max_connections", "%d is below 1", l.MaxConnections)
	}
	if l.HandshakeTimeout <= 0 {
		v.at("limits.handshake_timeout", "%v is not positive", l.HandshakeTimeout)
	}
	if l.MaxInFlight < 1 {
		v.at("limits.max_in_flight", "%d is below 1", l.MaxInFlight)
	}
	if l.MaxPayload < MinMaxPayload || l.MaxPayload > MaxMaxPayload {
		v.at("limits.max_payload", "%s is out of range (want %s to %s)",
			formatSize(l.MaxPayload), formatSize(MinMaxPayload), formatSize(MaxMaxPayload))
	}
}

func (v *validator) log() {
	switch v.c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		v.at("log.level", "unknown level %s (want debug, info, warn or error)", quote(v.c.Log.Level))
	}
	switch v.c.Log.Format {
	case "text", "json":
	default:
		v.at("log.format", "unknown format %s (want text or json)", quote(v.c.Log.Format))
	}
}

func (v *validator) exports() {
	first := make(map[string]int) // name → index of its first export
	for i := range v.c.Exports {
		e := &v.c.Exports[i]
		ev := exportValidator{v: v, e: e, key: index("exports", i)}
		// Lines recorded by Parse belong to this export only if it is
		// still where Parse put it.
		ev.parsed = e.Line != 0 && v.c.pos[ev.key] == e.Line
		ev.check()
		if e.Name == "" {
			continue
		}
		if j, ok := first[e.Name]; ok {
			prev := exportValidator{v: v, e: &v.c.Exports[j], key: index("exports", j)}
			prev.parsed = prev.e.Line != 0 && v.c.pos[prev.key] == prev.e.Line
			where := prev.key
			if l := prev.line("name"); l != 0 {
				where = "line " + strconv.Itoa(l)
			}
			line := ev.line("name")
			if line == prev.line("name") {
				line = e.Line // an alias of the first export: name the alias
			}
			v.errorf(line, join(ev.key, "name"), "duplicate export name %s (first at %s)", quote(e.Name), where)
			continue
		}
		first[e.Name] = i
	}
}

type exportValidator struct {
	v      *validator
	e      *Export
	key    string // "exports[i]"
	parsed bool   // the lines in v.c.pos describe e
}

// line returns the line of a field of the export, or of the export.
func (ev *exportValidator) line(field string) int {
	if ev.parsed {
		return ev.v.c.line(join(ev.key, field))
	}
	return ev.e.Line
}

func (ev *exportValidator) errorf(field, format string, args ...any) {
	ev.v.errorf(ev.line(field), join(ev.key, field), format, args...)
}

// text reports a string that is too long, not valid UTF-8 or holds a NUL.
func (ev *exportValidator) text(field, s string) {
	switch {
	case len(s) > MaxNameLen:
		ev.errorf(field, "is %d bytes long (max %d)", len(s), MaxNameLen)
	case !utf8.ValidString(s):
		ev.errorf(field, "%s is not valid UTF-8", quote(s))
	case strings.Contains(s, "\x00"):
		ev.errorf(field, "%s contains a NUL byte", quote(s))
	}
}

func (ev *exportValidator) check() {
	e := ev.e
	if e.Name == "" {
		ev.errorf("name", "missing (every export needs a name, which clients ask for)")
	}
	ev.text("name", e.Name)
	ev.text("description", e.Description)

	if e.Path == "" {
		ev.errorf("path", "missing (want the file or device to serve, e.g. /dev/mmcblk0)")
	} else {
		ev.pathPattern("path", e.Path)
	}

	if e.Size < 0 {
		ev.errorf("size", "%d is negative", e.Size)
	}
	if e.Offset < 0 {
		ev.errorf("offset", "%d is negative", e.Offset)
	}
	if e.Size > 0 && e.Offset > 0 && e.Offset > math.MaxInt64-e.Size {
		ev.errorf("size", "offset %d + size %d is past the largest possible file", e.Offset, e.Size)
	}

	switch e.TLS {
	case "", TLSOptional:
	case TLSRequired:
		if ev.v.c.TLS.EffectiveMode() == TLSOff {
			ev.errorf("tls", "required, but the server has no TLS (set tls.cert and tls.key at the top level)")
		}
	default:
		ev.errorf("tls", "unknown value %s (want optional or required)", quote(e.TLS))
	}

	switch e.CopyOnWrite {
	case "", CopyOnWriteConnection, CopyOnWritePersistent:
	default:
		ev.errorf("copy_on_write", "unknown mode %s (want connection, persistent, true or false)", quote(e.CopyOnWrite))
	}
	if e.ReadOnly && e.CopyOnWrite != "" {
		ev.errorf("readonly", "conflicts with copy_on_write: %s (clients may write to a copy-on-write export; its image is never written)", e.CopyOnWrite)
	}
	switch {
	case e.CopyOnWrite == CopyOnWritePersistent && e.Overlay == "":
		ev.errorf("copy_on_write", "persistent needs an overlay file to keep the writes (set overlay)")
	case e.CopyOnWrite != CopyOnWritePersistent && e.Overlay != "":
		ev.errorf("overlay", "is used only with copy_on_write: persistent")
	case e.Overlay != "":
		ev.pathPattern("overlay", e.Overlay)
		if e.Overlay == e.Path {
			ev.errorf("overlay", "%s is the same file as path", quote(e.Overlay))
		} else if perClient(e.Path) && !perClient(e.Overlay) {
			ev.errorf("overlay", "has no %%s while path has one: every client would write into one overlay over a different image")
		}
	}

	for j, p := range e.Allow {
		field := index("allow", j)
		switch {
		case !p.IsValid():
			ev.errorf(field, "is not a valid prefix")
		case p.Addr().Is4In6():
			ev.errorf(field, "%s is an IPv4-mapped IPv6 prefix (write it as IPv4, e.g. 10.0.0.0/8)", p)
		case p != p.Masked():
			ev.errorf(field, "%s has bits set past the prefix length (want %s, or %s/%d for one host)", p, p.Masked(), p.Addr(), p.Addr().BitLen())
		}
	}

	if e.MaxConnections < 0 {
		ev.errorf("max_connections", "%d is negative (0 means no limit)", e.MaxConnections)
	}
	if e.IdleTimeout < 0 {
		ev.errorf("idle_timeout", "%v is negative (0 means none)", e.IdleTimeout)
	}
}

// pathPattern checks a path that may hold one %s.
func (ev *exportValidator) pathPattern(field, p string) {
	switch n, bad := scanPattern(p); {
	case strings.Contains(p, "\x00"):
		ev.errorf(field, "%s contains a NUL byte", quote(p))
	case bad != "":
		ev.errorf(field, "%s has %q; only one %%s (the client's address) and %%%% (a literal %%) may follow %%", quote(p), bad)
	case n > 1:
		ev.errorf(field, "%s has %d %%s; at most one is allowed (the client's address)", quote(p), n)
	}
}
