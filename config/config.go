package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is one boardnbd configuration file.
type Config struct {
	Version   int       // version: must be 1
	Listen    []string  // listen: host:port addresses
	Discovery Discovery // discovery: how exports are advertised
	Limits    Limits    // limits: server-wide resource limits
	Log       Log       // log: logging
	TLS       TLS       // tls: certificates and whether TLS is offered or required
	Exports   []Export  // exports: what is served, in file order
	File      string    // the file name given to Parse; not from YAML

	// pos maps the key paths that Parse decoded ("", "limits",
	// "exports[1].allow[0]") to their lines, so that Validate can name
	// lines. It is nil for a Config built in code.
	pos map[string]int
	// versionSet records that Parse found a version that was not null,
	// to tell "version: 0" from no version.
	versionSet bool
}

// Discovery configures DNS-SD advertising of the exports.
type Discovery struct {
	Enabled    bool     // enabled: advertise at all
	Backend    string   // backend: "auto", "builtin" or "avahi"
	Interfaces []string // interfaces: names to advertise on; empty means every suitable one
	Board      string   // board: free text for the TXT record
	Instance   string   // instance: instance name template; "" lets package discovery choose
}

// Limits bounds the resources the server spends.
type Limits struct {
	MaxConnections   int           // max_connections: open connections, whole server
	HandshakeTimeout time.Duration // handshake_timeout: time from accept to transmission phase
	MaxInFlight      int           // max_in_flight: outstanding requests per connection
	MaxPayload       int64         // max_payload: largest read or write request, bytes
}

// TLS configures NBD_OPT_STARTTLS. Paths are PEM files.
type TLS struct {
	// Mode is "off", "optional" (clients may start TLS; exports with
	// tls: required need it) or "required" (every client must). The
	// default is "optional" when a certificate is given, else "off".
	Mode string // mode
	Cert string // cert: the server's certificate chain
	Key  string // key: its private key
	// CA, if set, makes TLS mutual: a client must present a certificate
	// signed by one of these CAs.
	CA string // ca
}

// EffectiveMode is Mode with its default applied: "optional" when a
// certificate is given, else "off".
func (t TLS) EffectiveMode() string {
	switch {
	case t.Mode != "":
		return t.Mode
	case t.Cert != "":
		return TLSOptional
	}
	return TLSOff
}

// TLS modes, the values of TLS.Mode and (but for TLSOff) Export.TLS.
const (
	TLSOff      = "off"
	TLSOptional = "optional"
	TLSRequired = "required"
)

// Log configures logging.
type Log struct {
	Level  string // level: "debug", "info", "warn" or "error"
	Format string // format: "text" or "json"
}

// Export is one export: a file, device or slice of one, served under a
// name.
type Export struct {
	Name           string         // name: what clients ask for
	Path           string         // path: file or device; may contain one %s (see PathFor)
	Description    string         // description: sent to clients that ask
	ReadOnly       bool           // readonly: refuse writes
	Size           int64          // size: bytes to serve; 0 means to the end
	Offset         int64          // offset: first byte served
	CopyOnWrite    string         // copy_on_write: "", CopyOnWriteConnection or CopyOnWritePersistent
	Overlay        string         // overlay: where persistent copy-on-write keeps writes; may contain %s
	Multifile      bool           // multifile: serve path.0, path.1, ... as one export
	Allow          []netip.Prefix // allow: clients that may connect; empty means everyone
	MaxConnections int            // max_connections: 0 means no per-export limit
	IdleTimeout    time.Duration  // idle_timeout: 0 means none
	Flush          bool           // flush: advertise and honour flush
	FUA            bool           // fua: advertise and honour forced unit access
	Trim           bool           // trim: advertise and honour trim
	AllowInUse     bool           // allow_in_use: serve storage that something else has open
	TLS            string         // tls: "" or TLSOptional (as the server), TLSRequired (only over TLS)
	Line           int            // line of this export in File; not from YAML
}

// Copy-on-write modes, the values of Export.CopyOnWrite besides "" (off).
const (
	CopyOnWriteConnection = "connection" // writes live as long as the connection
	CopyOnWritePersistent = "persistent" // writes go to Export.Overlay and survive
)

// Limits on what Validate accepts.
const (
	MaxNameLen    = 4096     // bytes in an export name or description, as in the NBD protocol
	MinMaxPayload = 64 << 10 // smallest limits.max_payload
	MaxMaxPayload = 1 << 30  // largest limits.max_payload
)

// maxFileSize bounds the configuration text, so that pointing Load at a
// disk image by mistake fails fast instead of filling memory.
const maxFileSize = 4 << 20

// Default returns the configuration of a file that says only "version: 1":
// every default applied, no exports. Start from it to build a Config in
// code.
func Default() *Config {
	c := defaults()
	c.Version = 1
	return c
}

// DefaultExport returns an export with every default applied and no name or
// path. Start from it to build an Export in code.
func DefaultExport() Export {
	return Export{
		Flush: true,
		FUA:   true,
		Trim:  true,
	}
}

// defaults is the one place where defaults live. Version is left 0 so that
// Parse can tell a missing version.
func defaults() *Config {
	return &Config{
		Listen: []string{":10809"},
		Discovery: Discovery{
			Enabled: true,
			Backend: "auto",
		},
		Limits: Limits{
			MaxConnections:   256,
			HandshakeTimeout: 30 * time.Second,
			MaxInFlight:      32,
			MaxPayload:       32 << 20,
		},
		Log: Log{
			Level:  "info",
			Format: "text",
		},
	}
}

// Load reads and parses the configuration file at path. A file that
// cannot be read is reported as the *fs.PathError from the os package;
// problems in its content as Errors, as from Parse.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	return Parse(data, path)
}

// Parse decodes a configuration, applies defaults and validates it.
// filename is used in messages and kept in Config.File; its directory is
// where relative paths of exports start. Parse reads no file. On any
// problem Parse returns a nil *Config and an error of type Errors that
// lists every problem found, in line order.
func Parse(data []byte, filename string) (*Config, error) {
	if len(data) > maxFileSize {
		return nil, Errors{{File: filename, Msg: fmt.Sprintf("file is larger than %s; is it a configuration file?", formatSize(maxFileSize))}}
	}
	root, errs := parseYAML(data, filename)
	if errs != nil {
		return nil, errs
	}
	c := defaults()
	c.File = filename
	d := newDecoder(filename, len(data))
	d.config(root, c)
	c.pos = d.pos
	c.resolvePaths(filepath.Dir(filename))
	if c.versionSet && c.Version != 1 {
		// A file from a newer boardnbd: its other keys are likely fine
		// for that version, so complaining about them helps nobody.
		return nil, Errors{c.versionError()}
	}
	errs, dropped := d.errs, d.dropped
	if !d.hopeless {
		verrs, vdropped := c.validate(d.failed)
		errs = append(errs, verrs...)
		dropped += vdropped
	}
	if len(errs) > 0 {
		errs.sortByLine()
		return nil, errs.limit(filename, dropped)
	}
	return c, nil
}

// syntaxLine finds the line in a message of the YAML parser, which does
// not export it.
var syntaxLine = regexp.MustCompile(`^yaml: (?:line (\d+): )?`)

// parseYAML parses exactly one YAML document into a node tree. An empty
// file, or one with only comments, gives a nil node.
func parseYAML(data []byte, filename string) (*yaml.Node, Errors) {
	syntax := func(err error) Errors {
		msg := err.Error()
		line := 0
		if m := syntaxLine.FindStringSubmatch(msg); m != nil {
			line, _ = strconv.Atoi(m[1])
			msg = msg[len(m[0]):]
		}
		return Errors{{File: filename, Line: line, Msg: "YAML syntax: " + msg}}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
		return nil, nil
	} else if err != nil {
		return nil, syntax(err)
	}
	var next yaml.Node
	if err := dec.Decode(&next); err == nil {
		return nil, Errors{{File: filename, Line: next.Line, Msg: "a second YAML document (---); want one"}}
	} else if !errors.Is(err, io.EOF) {
		return nil, syntax(err)
	}
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		return doc.Content[0], nil
	}
	return nil, nil
}

// resolvePaths makes the relative paths of the exports relative to dir, the
// directory of the file, rather than to the working directory.
func (c *Config) resolvePaths(dir string) {
	if dir == "." {
		return
	}
	// dir goes into a pattern where % is special.
	dir = strings.ReplaceAll(dir, "%", "%%")
	rel := func(p string) string {
		if p == "" || strings.HasPrefix(p, "/") || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	for i := range c.Exports {
		e := &c.Exports[i]
		e.Path, e.Overlay = rel(e.Path), rel(e.Overlay)
	}
	c.TLS.Cert, c.TLS.Key, c.TLS.CA = rel(c.TLS.Cert), rel(c.TLS.Key), rel(c.TLS.CA)
}

// line returns the line of key, or of its nearest parent that Parse saw,
// or 0.
func (c *Config) line(key string) int {
	for k := key; ; k = parentKey(k) {
		if l, ok := c.pos[k]; ok {
			return l
		}
		if k == "" {
			return 0
		}
	}
}

// parentKey returns "exports[1]" for "exports[1].allow", "exports" for
// "exports[1]" and "" for "exports".
func parentKey(k string) string {
	i := strings.LastIndexAny(k, ".[")
	if i < 0 {
		return ""
	}
	return k[:i]
}
