package config

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// withoutPos returns c without the lines Parse recorded, to compare with a
// Config built in code.
func withoutPos(c *Config) *Config {
	d := *c
	d.pos = nil
	d.versionSet = false
	return &d
}

func TestParseDefaults(t *testing.T) {
	c, err := Parse([]byte("version: 1\n"), "c.yaml")
	if err != nil {
		t.Fatalf("Parse(version: 1) error = %v", err)
	}
	want := Default()
	want.File = "c.yaml"
	if got := withoutPos(c); !reflect.DeepEqual(got, want) {
		t.Errorf("Parse(version: 1) = %+v, want %+v", got, want)
	}
	if err := Default().Validate(); err != nil {
		t.Errorf("Default().Validate() = %v, want nil", err)
	}
}

func TestParseFull(t *testing.T) {
	in := `version: 1
listen: ["0.0.0.0:10809", "[::1]:10810"]
discovery:
  enabled: false
  backend: avahi
  interfaces: [eth0, usb0]
  board: "Rock 5B, rack 2"
  instance: "%e on %h"
limits:
  max_connections: 16
  handshake_timeout: 5s
  max_in_flight: 8
  max_payload: 1MiB
log:
  level: debug
  format: json
exports:
  - name: rootfs
    path: /dev/mmcblk0p2
    description: root file system
    readonly: true
    size: 4GiB
    offset: 0x100000
    multifile: true
    allow: [10.0.0.0/8, 192.168.1.7, "fd00::/8"]
    max_connections: 1
    idle_timeout: 10m
    flush: false
    fua: false
    trim: false
    allow_in_use: true
  - name: scratch
    path: /srv/scratch/%s.img
    copy_on_write: persistent
    overlay: /var/lib/boardnbd/%s.overlay
`
	c, err := Parse([]byte(in), "full.yaml")
	if err != nil {
		t.Fatalf("Parse(full) error = %v", err)
	}
	want := &Config{
		Version: 1,
		Listen:  []string{"0.0.0.0:10809", "[::1]:10810"},
		Discovery: Discovery{
			Enabled:    false,
			Backend:    "avahi",
			Interfaces: []string{"eth0", "usb0"},
			Board:      "Rock 5B, rack 2",
			Instance:   "%e on %h",
		},
		Limits: Limits{
			MaxConnections:   16,
			HandshakeTimeout: 5 * time.Second,
			MaxInFlight:      8,
			MaxPayload:       1 << 20,
		},
		Log: Log{Level: "debug", Format: "json"},
		Exports: []Export{
			{
				Name:        "rootfs",
				Path:        "/dev/mmcblk0p2",
				Description: "root file system",
				ReadOnly:    true,
				Size:        4 << 30,
				Offset:      1 << 20,
				Multifile:   true,
				Allow: []netip.Prefix{
					netip.MustParsePrefix("10.0.0.0/8"),
					netip.MustParsePrefix("192.168.1.7/32"),
					netip.MustParsePrefix("fd00::/8"),
				},
				MaxConnections: 1,
				IdleTimeout:    10 * time.Minute,
				AllowInUse:     true,
				Line:           18,
			},
			{
				Name:        "scratch",
				Path:        "/srv/scratch/%s.img",
				CopyOnWrite: CopyOnWritePersistent,
				Overlay:     "/var/lib/boardnbd/%s.overlay",
				Flush:       true,
				FUA:         true,
				Trim:        true,
				Line:        32,
			},
		},
		File: "full.yaml",
	}
	if got := withoutPos(c); !reflect.DeepEqual(got, want) {
		t.Errorf("Parse(full) =\n%+v\nwant\n%+v", got, want)
	}
}

// TestParseValid checks inputs at the edges of what is allowed.
func TestParseValid(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		check func(c *Config) bool
	}{
		{"no exports", "version: 1\n", func(c *Config) bool { return len(c.Exports) == 0 }},
		{"empty exports", "version: 1\nexports: []\n", func(c *Config) bool { return len(c.Exports) == 0 }},
		{"null exports", "version: 1\nexports:\n", func(c *Config) bool { return len(c.Exports) == 0 }},
		{"document start", "---\nversion: 1\n", func(c *Config) bool { return c.Version == 1 }},
		{"listen forms", `version: 1
listen: [":10809", "0.0.0.0:10809", "[::]:10809", "[::1]:10809", "[fe80::1%eth0]:10809", "localhost:10809", "board-1.local:10809", ":0"]
`, func(c *Config) bool { return len(c.Listen) == 8 }},
		{"null keeps default", "version: 1\nlimits:\n  max_connections:\nlog: ~\n", func(c *Config) bool {
			return c.Limits.MaxConnections == 256 && c.Log.Level == "info"
		}},
		{"copy_on_write true", "version: 1\nexports: [{name: a, path: /a, copy_on_write: true}]\n", func(c *Config) bool {
			return c.Exports[0].CopyOnWrite == CopyOnWriteConnection
		}},
		{"copy_on_write false", "version: 1\nexports: [{name: a, path: /a, copy_on_write: false}]\n", func(c *Config) bool {
			return c.Exports[0].CopyOnWrite == ""
		}},
		{"copy_on_write connection", "version: 1\nexports: [{name: a, path: /a, copy_on_write: connection}]\n", func(c *Config) bool {
			return c.Exports[0].CopyOnWrite == CopyOnWriteConnection
		}},
		{"per-client overlay over one image", "version: 1\nexports: [{name: a, path: /a, copy_on_write: persistent, overlay: /o/%s}]\n", func(c *Config) bool {
			return c.Exports[0].Overlay == "/o/%s"
		}},
		{"offset without size", "version: 1\nexports: [{name: a, path: /a, offset: 1MiB}]\n", func(c *Config) bool {
			return c.Exports[0].Offset == 1<<20 && c.Exports[0].Size == 0
		}},
		{"size zero with offset", "version: 1\nexports: [{name: a, path: /a, size: 0, offset: 512}]\n", func(c *Config) bool {
			return c.Exports[0].Offset == 512
		}},
		{"size string of digits", "version: 1\nexports: [{name: a, path: /a, size: \"4096\"}]\n", func(c *Config) bool {
			return c.Exports[0].Size == 4096
		}},
		{"multifile with %s", "version: 1\nexports: [{name: a, path: /srv/%s/disk.img, multifile: true}]\n", func(c *Config) bool {
			return c.Exports[0].Multifile && c.Exports[0].PerClient()
		}},
		{"literal percent", "version: 1\nexports: [{name: a, path: /srv/100%%.img}]\n", func(c *Config) bool {
			return !c.Exports[0].PerClient()
		}},
		{"longest name", "version: 1\nexports: [{path: /a, name: " + strings.Repeat("n", MaxNameLen) + "}]\n", func(c *Config) bool {
			return len(c.Exports[0].Name) == MaxNameLen
		}},
		{"numeric name", "version: 1\nexports: [{name: 010, path: /a}]\n", func(c *Config) bool {
			return c.Exports[0].Name == "010"
		}},
		{"UTF-8 name", "version: 1\nexports: [{name: \"räkning ☃\", path: /a}]\n", func(c *Config) bool {
			return c.Exports[0].Name == "räkning ☃"
		}},
		{"payload bounds", "version: 1\nlimits: {max_payload: 64KiB}\n", func(c *Config) bool {
			return c.Limits.MaxPayload == MinMaxPayload
		}},
		{"payload max", "version: 1\nlimits: {max_payload: 1G}\n", func(c *Config) bool {
			return c.Limits.MaxPayload == MaxMaxPayload
		}},
		{"zero idle_timeout", "version: 1\nexports: [{name: a, path: /a, idle_timeout: 0}]\n", func(c *Config) bool {
			return c.Exports[0].IdleTimeout == 0
		}},
		{"bare IPv6 allow", "version: 1\nexports: [{name: a, path: /a, allow: [\"fd00::7\"]}]\n", func(c *Config) bool {
			return c.Exports[0].Allow[0] == netip.MustParsePrefix("fd00::7/128")
		}},
		{"merge keys", `version: 1
x-board: &board
  readonly: true
  allow: [10.0.0.0/8]
x-quirks: &quirks
  trim: false
  readonly: false
exports:
  - <<: [*board, *quirks]
    name: a
    path: /a
  - <<: *board
    name: b
    path: /b
    readonly: false
`, func(c *Config) bool {
			a, b := c.Exports[0], c.Exports[1]
			return a.ReadOnly && !a.Trim && len(a.Allow) == 1 && !b.ReadOnly && b.Trim && len(b.Allow) == 1
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.in), "c.yaml")
			if err != nil {
				t.Fatalf("Parse(%q) error = %v, want nil", tt.in, err)
			}
			if !tt.check(c) {
				t.Errorf("Parse(%q) = %+v, fails the check", tt.in, c)
			}
			if err := c.Validate(); err != nil {
				t.Errorf("Parse(%q).Validate() = %v, want nil", tt.in, err)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr string
	}{
		{"0", 0, ""},
		{"512", 512, ""},
		{"4096B", 4096, ""},
		{"64KiB", 64 << 10, ""},
		{"64K", 64 << 10, ""},
		{"512MiB", 512 << 20, ""},
		{"512M", 512 << 20, ""},
		{"4GiB", 4 << 30, ""},
		{"4 GiB", 4 << 30, ""},
		{" 4G ", 4 << 30, ""},
		{"1TiB", 1 << 40, ""},
		{"1T", 1 << 40, ""},
		{"8388607TiB", 8388607 << 40, ""},
		{"8388608TiB", 0, "too large"},
		{"9223372036854775807", 1<<63 - 1, ""},
		{"9223372036854775808", 0, "too large"},
		{"1KB", 0, "ambiguous"},
		{"1MB", 0, "ambiguous"},
		{"1GB", 0, "ambiguous"},
		{"1kB", 0, "ambiguous"},
		{"1TB", 0, "ambiguous"},
		{"1k", 0, "unknown unit"},
		{"1kib", 0, "unknown unit"},
		{"1PiB", 0, "unknown unit"},
		{"1.5GiB", 0, "whole number"},
		{"-1", 0, "negative"},
		{"", 0, "not a size"},
		{"GiB", 0, "not a size"},
		{"0x1000", 0, "unknown unit"},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		switch {
		case tt.wantErr == "" && (err != nil || got != tt.want):
			t.Errorf("ParseSize(%q) = %d, %v, want %d", tt.in, got, err, tt.want)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("ParseSize(%q) = %d, %v, want error containing %q", tt.in, got, err, tt.wantErr)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for _, n := range []int64{0, 1, 512, 4096, 1536 << 20, 32 << 20, 1 << 30, 3 << 40, 1<<63 - 1} {
		s := formatSize(n)
		back, err := ParseSize(s)
		if err != nil || back != n {
			t.Errorf("ParseSize(formatSize(%d) = %q) = %d, %v, want %d", n, s, back, err, n)
		}
	}
}

// TestValidateInCode checks configurations built without a file: problems
// have no file and no line, only a key.
func TestValidateInCode(t *testing.T) {
	c := Default()
	e := DefaultExport()
	e.Name, e.Path = "rootfs", "/dev/sda"
	c.Exports = append(c.Exports, e)
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate() = %v, want nil", err)
	}

	c.Exports = append(c.Exports, DefaultExport())
	c.Limits = Limits{}
	err := c.Validate()
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Validate() = %v, want Errors", err)
	}
	want := []string{
		"limits.max_connections: 0 is below 1",
		"limits.handshake_timeout: 0s is not positive",
		"limits.max_in_flight: 0 is below 1",
		"limits.max_payload: 0 is out of range (want 64KiB to 1GiB)",
		"exports[1].name: missing",
		"exports[1].path: missing",
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Validate() =\n%v\nwant a line starting %q", err, w)
		}
	}
	if len(errs) != len(want) {
		t.Errorf("Validate() has %d problems, want %d:\n%v", len(errs), len(want), err)
	}

	var zero Config
	if err := zero.Validate(); err == nil || !strings.Contains(err.Error(), "version: missing") {
		t.Errorf("Config{}.Validate() = %v, want version: missing", err)
	}
}

// TestValidateAfterEdit checks that lines stay right when a parsed Config
// is changed in code before Validate.
func TestValidateAfterEdit(t *testing.T) {
	in := `version: 1
exports:
  - name: a
    path: /a
  - name: b
    path: /b
    allow: [10.0.0.0/8]
`
	c, err := Parse([]byte(in), "c.yaml")
	if err != nil {
		t.Fatalf("Parse(%q) error = %v", in, err)
	}
	c.Exports = c.Exports[1:] // b is now exports[0], at line 5
	c.Exports[0].Allow[0] = netip.MustParsePrefix("10.0.0.1/8")
	err = c.Validate()
	if err == nil || !strings.HasPrefix(err.Error(), "c.yaml:5: exports[0].allow[0]:") {
		t.Errorf("Validate() after edit = %v, want c.yaml:5: exports[0].allow[0]: ...", err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("version: 1\nexports: [{name: a, path: /a}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(good)
	if err != nil || c.File != good || len(c.Exports) != 1 {
		t.Errorf("Load(%q) = %+v, %v, want one export and File %q", good, c, err, good)
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("version: 1\nlog: {level: loud}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad); err == nil || !strings.HasPrefix(err.Error(), bad+":2: log.level:") {
		t.Errorf("Load(%q) error = %v, want %s:2: log.level: ...", bad, err, bad)
	}

	missing := filepath.Join(dir, "missing.yaml")
	if _, err := Load(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load(%q) error = %v, want fs.ErrNotExist", missing, err)
	}

	big := filepath.Join(dir, "big.img")
	if err := os.WriteFile(big, make([]byte, maxFileSize+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "larger than 4MiB") {
		t.Errorf("Load(%q) error = %v, want larger than 4MiB", big, err)
	}
}

// TestParseAliasBomb checks that aliases cannot make a small file cost
// Parse quadratic time: here 3000 exports that are each an alias of one
// export with an allow list of 3000 prefixes.
func TestParseAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("version: 1\nx-export: &e\n  name: a\n  path: /a\n  allow: [")
	for i := range 3000 {
		b.WriteString("10.0." + strconv.Itoa(i/256%256) + "." + strconv.Itoa(i%256) + ", ")
	}
	b.WriteString("]\nexports: [*e")
	b.WriteString(strings.Repeat(", *e", 2999))
	b.WriteString("]\n")
	in := b.String()
	_, err := Parse([]byte(in), "c.yaml")
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Parse(%d bytes of aliases) error = %v, want Errors", len(in), err)
	}
	if len(errs) != 1 || !strings.Contains(errs[0].Msg, "aliases expand to more than") {
		t.Errorf("Parse(%d bytes of aliases) error = %d problems, first %v; want one: aliases expand to more than ...", len(in), len(errs), errs[0])
	}
}

// TestParseLargeFile checks that a file without aliases, however dense,
// stays within the budget that stops alias expansion. Flow lists of one
// character are the most nodes per byte YAML has.
func TestParseLargeFile(t *testing.T) {
	dense := "[" + strings.Repeat("1,", 1000) + "1]"
	var b strings.Builder
	b.WriteString("version: 1\nexports:\n")
	for i := range 200 {
		b.WriteString("- {name: e" + strconv.Itoa(i) + ", path: /a, allow: " + dense + "}\n")
	}
	in := b.String()
	_, err := Parse([]byte(in), "c.yaml")
	if err == nil || strings.Contains(err.Error(), "aliases expand") {
		t.Errorf("Parse(%d bytes without aliases) error = %.200v, want only problems with the prefixes", len(in), err)
	}
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != maxProblems+1 || errs[maxProblems].Msg != "and 200100 more problems" {
		t.Errorf("Parse(%d bytes without aliases) = %d problems, last %v, want %d and then \"and 200100 more problems\"", len(in), len(errs), errs[len(errs)-1], maxProblems)
	}
}

func TestParseRelativePaths(t *testing.T) {
	in := `version: 1
exports:
  - name: a
    path: images/%s.img
    copy_on_write: persistent
    overlay: ../overlays/%s.overlay
  - name: b
    path: /dev/sda
`
	tests := []struct {
		file          string
		path, overlay string
	}{
		{"/etc/boardnbd/boardnbd.yaml", "/etc/boardnbd/images/%s.img", "/etc/overlays/%s.overlay"},
		{"boardnbd.yaml", "images/%s.img", "../overlays/%s.overlay"},
		{"conf/boardnbd.yaml", "conf/images/%s.img", "overlays/%s.overlay"},
		{"/srv/100%/boardnbd.yaml", "/srv/100%%/images/%s.img", "/srv/overlays/%s.overlay"},
	}
	for _, tt := range tests {
		c, err := Parse([]byte(in), tt.file)
		if err != nil {
			t.Fatalf("Parse(%q) error = %v", tt.file, err)
		}
		a, b := c.Exports[0], c.Exports[1]
		if a.Path != tt.path || a.Overlay != tt.overlay || b.Path != "/dev/sda" {
			t.Errorf("Parse(%q) paths = %q, %q, %q; want %q, %q, %q", tt.file, a.Path, a.Overlay, b.Path, tt.path, tt.overlay, "/dev/sda")
		}
	}
}
