package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// An errorTest is a configuration with a problem, and where Parse must
// say it is.
type errorTest struct {
	name string
	in   string
	line int    // 0: the problem belongs to no line
	key  string // "": the problem belongs to no key
	msg  string // part of the message
}

// runErrorTests checks that Parse rejects each input with a problem at the
// given line and key, formatted as "c.yaml:LINE: KEY: ...".
func runErrorTests(t *testing.T, tests []errorTest) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.in), "c.yaml")
			if err == nil {
				t.Fatalf("Parse(%q) error = nil, want line %d key %q", tt.in, tt.line, tt.key)
			}
			if c != nil {
				t.Errorf("Parse(%q) = %+v with an error, want nil", tt.in, c)
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse(%q) error = %T, want Errors", tt.in, err)
			}
			for _, e := range errs {
				if e.Line != tt.line || e.Key != tt.key || !strings.Contains(e.Msg, tt.msg) {
					continue
				}
				want := "c.yaml:" + fmt.Sprint(tt.line) + ": "
				if tt.line == 0 {
					want = "c.yaml: "
				}
				if tt.key != "" {
					want += tt.key + ": "
				}
				if !strings.HasPrefix(e.Error(), want) {
					t.Errorf("Parse(%q) error = %q, want it to start with %q", tt.in, e.Error(), want)
				}
				return
			}
			t.Errorf("Parse(%q) error =\n%v\nwant line %d, key %q, message containing %q", tt.in, err, tt.line, tt.key, tt.msg)
		})
	}
}

var syntaxTests = []errorTest{
	{"unclosed list", `version: 1
exports: [
`, 2, "", "YAML syntax"},
	{"tab indent", "version: 1\nlog:\n\tlevel: info\n", 3, "", "YAML syntax"},
	{"unclosed quote", `version: 1
listen: [":10809]
`, 2, "", "YAML syntax"},
	{"second document", `version: 1
---
version: 1
`, 2, "", "second YAML document"},
	{"scalar file", "hello\n", 1, "", `got string "hello"`},
	{"list file", "- version: 1\n", 1, "", "got a list"},
	{"CR line ends", "\r\r00", 3, "", "got integer 00"}, // found by FuzzParse
	{"CR line ends in a file", "version: 1\rlog:\r  level: loud\r", 3, "log.level", "unknown level"},
	{"repeated key", `version: 1
log: {level: info}
version: 1
`, 3, "version", "repeated key (first at line 1)"},
	{"repeated export key", `version: 1
exports:
  - name: a
    path: /a
    name: b
`, 5, "exports[0].name", "repeated key (first at line 3)"},
	{"list as key", "version: 1\n? [a]\n: 1\n", 2, "", "want a key, got a list"},
	{"bad merge", `version: 1
exports:
  - <<: 5
    name: a
    path: /a
`, 3, "exports[0]", "merge key << wants a mapping"},
}

func TestParseSyntax(t *testing.T) { runErrorTests(t, syntaxTests) }

var unknownKeyTests = []errorTest{
	{"top level", `version: 1
listen_on: [":10809"]
`, 2, "listen_on", `unknown key (did you mean "listen"?)`},
	{"top level far off", `version: 1
servers: []
`, 2, "servers", "unknown key (want one of version, listen"},
	{"discovery", `version: 1
discovery:
  enabled: true
  enable: false
`, 4, "discovery.enable", `did you mean "enabled"?`},
	{"limits", `version: 1
limits:
  max_conns: 5
`, 3, "limits.max_conns", "unknown key"},
	{"log", `version: 1
log:
  colour: true
`, 3, "log.colour", "unknown key"},
	{"second export", `version: 1
exports:
  - name: a
    path: /a
  - name: b
    path: /b
    readOnly: true
`, 7, "exports[1].readOnly", `did you mean "readonly"?`},
	{"merged from anchor", `version: 1
x-common: &common
  readonly: true
  fuaa: false
exports:
  - <<: *common
    name: a
    path: /a
`, 4, "exports[0].fuaa", `did you mean "fua"?`},
}

func TestParseUnknownKey(t *testing.T) { runErrorTests(t, unknownKeyTests) }

var wrongTypeTests = []errorTest{
	{"string for readonly", `version: 1
exports:
  - name: a
    path: /a
    readonly: "true"
`, 5, "exports[0].readonly", `want true or false, got string "true"`},
	{"yes for readonly", `version: 1
exports:
  - name: a
    path: /a
    readonly: yes
`, 5, "exports[0].readonly", "YAML 1.2 has only true and false"},
	{"integer for multifile", `version: 1
exports:
  - name: a
    path: /a
    multifile: 1
`, 5, "exports[0].multifile", "got integer 1"},
	{"list for name", `version: 1
exports:
  - name: [a, b]
    path: /a
`, 3, "exports[0].name", "want a string, got a list"},
	{"mapping for path", `version: 1
exports:
  - name: a
    path:
      file: /a
`, 5, "exports[0].path", "want a string, got a mapping"},
	{"string version", `version: "1"
`, 1, "version", `want an integer, got string "1"`},
	{"word for max_connections", `version: 1
limits:
  max_connections: many
`, 3, "limits.max_connections", `want an integer, got string "many"`},
	{"float for max_in_flight", `version: 1
limits:
  max_in_flight: 1.5
`, 3, "limits.max_in_flight", "want an integer, got number 1.5"},
	{"huge integer", `version: 1
limits:
  max_connections: 99999999999999999999
`, 3, "limits.max_connections", "99999999999999999999"},
	{"scalar for listen", `version: 1
listen: ":10809"
`, 2, "listen", "want a list"},
	{"mapping for exports", `version: 1
exports:
  name: a
  path: /a
`, 3, "exports", "want a list of exports, got a mapping"},
	{"scalar export", `version: 1
exports:
  - name: a
    path: /a
  - rootfs
`, 5, "exports[1]", `want a mapping with name and path, got string "rootfs"`},
	{"boolean for discovery", `version: 1
discovery: true
`, 2, "discovery", "want a mapping, got boolean true"},
	{"scalar for allow", `version: 1
exports:
  - name: a
    path: /a
    allow: 10.0.0.0/8
`, 5, "exports[0].allow", "want a list of CIDR prefixes"},
	{"list in allow", `version: 1
exports:
  - name: a
    path: /a
    allow:
      - 10.0.0.0/8
      - [10.1.0.0/16]
`, 7, "exports[0].allow[1]", "want a string, got a list"},
	{"float for size", `version: 1
exports:
  - name: a
    path: /a
    size: 1.5
`, 5, "exports[0].size", `want a size such as 4096 or "512MiB", got number 1.5`},
	{"bare integer duration", `version: 1
exports:
  - name: a
    path: /a
    idle_timeout: 30
`, 5, "exports[0].idle_timeout", `want a duration with a unit, such as "30s"`},
	{"bad duration", `version: 1
limits:
  handshake_timeout: soon
`, 3, "limits.handshake_timeout", `"soon" is not a duration`},
	{"integer copy_on_write", `version: 1
exports:
  - name: a
    path: /a
    copy_on_write: 1
`, 5, "exports[0].copy_on_write", "want connection, persistent, true or false, got integer 1"},
}

func TestParseWrongType(t *testing.T) { runErrorTests(t, wrongTypeTests) }

var versionTests = []errorTest{
	{"empty file", "", 0, "version", "missing"},
	{"comments only", "# boardnbd\n", 0, "version", "missing"},
	{"missing", `listen: [":10809"]
exports: []
`, 1, "version", "missing (want version: 1)"},
	{"two", `version: 2
exports: []
`, 1, "version", "unsupported version 2"},
	{"zero", `exports: []
version: 0
`, 2, "version", "unsupported version 0"},
	{"negative", "version: -1\n", 1, "version", "unsupported version -1"},
	{"null", "version:\n", 1, "version", "missing"},
}

func TestParseVersion(t *testing.T) { runErrorTests(t, versionTests) }

// TestParseNewerVersion checks that a file of another version gets one
// problem, not one per key this version does not know.
func TestParseNewerVersion(t *testing.T) {
	in := "version: 2\ntls: {cert: /c}\nexports: [{name: a, path: /a, tls: true}]\n"
	_, err := Parse([]byte(in), "c.yaml")
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 1 || errs[0].Key != "version" {
		t.Errorf("Parse(%q) error = %v, want one problem with version", in, err)
	}
}

var missingTests = []errorTest{
	{"name", `version: 1
exports:
  - name: a
    path: /a
  - path: /b
    readonly: true
`, 5, "exports[1].name", "missing"},
	{"empty name", `version: 1
exports:
  - name: ""
    path: /a
`, 3, "exports[0].name", "missing"},
	{"null name", `version: 1
exports:
  - name:
    path: /a
`, 3, "exports[0].name", "missing"},
	{"path", `version: 1
exports:
  - name: a
    readonly: true
`, 3, "exports[0].path", "missing"},
	{"flow export", `version: 1
exports: [{name: a}]
`, 2, "exports[0].path", "missing"},
}

func TestParseMissing(t *testing.T) { runErrorTests(t, missingTests) }

var duplicateTests = []errorTest{
	{"second", `version: 1
exports:
  - name: rootfs
    path: /a
  - name: boot
    path: /b
  - name: rootfs
    path: /c
`, 7, "exports[2].name", `duplicate export name "rootfs" (first at line 3)`},
	{"alias", `version: 1
exports:
  - &a
    name: rootfs
    path: /a
  - *a
`, 6, "exports[1].name", "(first at line 4)"},
}

func TestParseDuplicateNames(t *testing.T) { runErrorTests(t, duplicateTests) }

var allowTests = []errorTest{
	{"prefix too long", `version: 1
exports:
  - name: a
    path: /a
  - name: b
    path: /b
    allow: [10.0.0.0/33]
`, 7, "exports[1].allow[0]", `"10.0.0.0/33" is not a CIDR prefix (want e.g. 10.0.0.0/8)`},
	{"bad address", `version: 1
exports:
  - name: a
    path: /a
    allow:
      - 10.0.0.0/8
      - 10.0.0.300
`, 7, "exports[0].allow[1]", `"10.0.0.300" is not an address or CIDR prefix`},
	{"host bits", `version: 1
exports:
  - name: a
    path: /a
    allow:
      - 10.0.0.1/8
`, 6, "exports[0].allow[0]", "want 10.0.0.0/8, or 10.0.0.1/32 for one host"},
	{"zone", `version: 1
exports:
  - name: a
    path: /a
    allow: ["fe80::1%eth0"]
`, 5, "exports[0].allow[0]", "has a zone"},
	{"mapped", `version: 1
exports:
  - name: a
    path: /a
    allow: ["::ffff:10.0.0.0/104"]
`, 5, "exports[0].allow[0]", "IPv4-mapped"},
	{"hostname", `version: 1
exports:
  - name: a
    path: /a
    allow: [board1.local]
`, 5, "exports[0].allow[0]", "not an address or CIDR prefix"},
}

func TestParseAllow(t *testing.T) { runErrorTests(t, allowTests) }

var listenTests = []errorTest{
	{"port only", `version: 1
listen: ["10809"]
`, 2, "listen[0]", "is not host:port"},
	{"no port", `version: 1
listen:
  - ":10809"
  - 192.168.1.2
`, 4, "listen[1]", "is not host:port"},
	{"bare IPv6", `version: 1
listen: ["::1:10809"]
`, 2, "listen[0]", "is not host:port"},
	{"port too big", `version: 1
listen: [":65536"]
`, 2, "listen[0]", `port "65536" is not a number from 0 to 65535`},
	{"port name", `version: 1
listen: [":nbd"]
`, 2, "listen[0]", `port "nbd" is not a number`},
	{"empty port", `version: 1
listen: ["0.0.0.0:"]
`, 2, "listen[0]", `port "" is not a number`},
	{"IPv4 in brackets", `version: 1
listen: ["[10.0.0.1]:10809"]
`, 2, "listen[0]", `host "10.0.0.1" is not an IP address or host name`},
	{"bad host", `version: 1
listen: ["bad_host!:10809"]
`, 2, "listen[0]", "is not an IP address or host name"},
	{"twice", `version: 1
listen:
  - ":10809"
  - ":10809"
`, 4, "listen[1]", "listed twice"},
	{"empty", `version: 1
listen: []
`, 2, "listen", "is empty"},
}

func TestParseListen(t *testing.T) { runErrorTests(t, listenTests) }

var sizeTests = []errorTest{
	{"negative size", `version: 1
exports:
  - name: a
    path: /a
    size: -1
`, 5, "exports[0].size", "-1 is negative"},
	{"negative size string", `version: 1
exports:
  - name: a
    path: /a
    size: "-4KiB"
`, 5, "exports[0].size", "is negative"},
	{"negative offset", `version: 1
exports:
  - name: a
    path: /a
    offset: -512
`, 5, "exports[0].offset", "-512 is negative"},
	{"unknown unit", `version: 1
exports:
  - name: a
    path: /a
    size: 12 parsecs
`, 5, "exports[0].size", `unknown unit "parsecs"`},
	{"ambiguous unit", `version: 1
exports:
  - name: a
    path: /a
    size: 4GB
`, 5, "exports[0].size", `unit "GB" is ambiguous (write GiB`},
	{"fraction", `version: 1
exports:
  - name: a
    path: /a
    offset: 1.5GiB
`, 5, "exports[0].offset", "is not a whole number"},
	{"no number", `version: 1
exports:
  - name: a
    path: /a
    size: GiB
`, 5, "exports[0].size", "is not a size"},
	{"too large", `version: 1
exports:
  - name: a
    path: /a
    size: 99999999TiB
`, 5, "exports[0].size", "is too large"},
	{"huge integer", `version: 1
exports:
  - name: a
    path: /a
    size: 9223372036854775808
`, 5, "exports[0].size", "out of range"},
	{"past the end", `version: 1
exports:
  - name: a
    path: /a
    offset: 9223372036854775807
    size: 1
`, 6, "exports[0].size", "past the largest possible file"},
	{"payload too small", `version: 1
limits:
  max_payload: 4KiB
`, 3, "limits.max_payload", "4KiB is out of range (want 64KiB to 1GiB)"},
	{"payload too large", `version: 1
limits:
  max_payload: 2147483648
`, 3, "limits.max_payload", "2GiB is out of range"},
}

func TestParseSizes(t *testing.T) { runErrorTests(t, sizeTests) }

var copyOnWriteTests = []errorTest{
	{"persistent without overlay", `version: 1
exports:
  - name: a
    path: /a
    copy_on_write: persistent
`, 5, "exports[0].copy_on_write", "persistent needs an overlay"},
	{"overlay without copy_on_write", `version: 1
exports:
  - name: a
    path: /a
    overlay: /var/lib/boardnbd/a.overlay
`, 5, "exports[0].overlay", "only with copy_on_write: persistent"},
	{"overlay with connection", `version: 1
exports:
  - name: a
    path: /a
    copy_on_write: true
    overlay: /var/lib/boardnbd/a.overlay
`, 6, "exports[0].overlay", "only with copy_on_write: persistent"},
	{"overlay is path", `version: 1
exports:
  - name: a
    path: /a
    copy_on_write: persistent
    overlay: /a
`, 6, "exports[0].overlay", "same file as path"},
	{"shared overlay", `version: 1
exports:
  - name: a
    path: /srv/%s.img
    copy_on_write: persistent
    overlay: /var/lib/boardnbd/a.overlay
`, 6, "exports[0].overlay", "every client would write into one overlay"},
	{"readonly", `version: 1
exports:
  - name: a
    path: /a
    readonly: true
    copy_on_write: connection
`, 5, "exports[0].readonly", "conflicts with copy_on_write: connection"},
}

func TestParseCopyOnWrite(t *testing.T) { runErrorTests(t, copyOnWriteTests) }

var enumTests = []errorTest{
	{"backend", `version: 1
discovery:
  backend: bonjour
`, 3, "discovery.backend", `unknown backend "bonjour" (want auto, builtin or avahi)`},
	{"level", `version: 1
log:
  level: verbose
`, 3, "log.level", `unknown level "verbose" (want debug, info, warn or error)`},
	{"level case", `version: 1
log:
  level: INFO
`, 3, "log.level", `unknown level "INFO"`},
	{"format", `version: 1
log:
  format: xml
`, 3, "log.format", `unknown format "xml" (want text or json)`},
	{"copy_on_write", `version: 1
exports:
  - name: a
    path: /a
    copy_on_write: always
`, 5, "exports[0].copy_on_write", `unknown mode "always"`},
	{"copy_on_write yes", `version: 1
exports:
  - name: a
    path: /a
    copy_on_write: yes
`, 5, "exports[0].copy_on_write", `unknown mode "yes"`},
}

func TestParseEnums(t *testing.T) { runErrorTests(t, enumTests) }

var nameTests = []errorTest{
	{"too long", "version: 1\nexports:\n  - path: /a\n    name: " + strings.Repeat("n", MaxNameLen+1) + "\n",
		4, "exports[0].name", "is 4097 bytes long (max 4096)"},
	{"NUL", `version: 1
exports:
  - name: "a\0b"
    path: /a
`, 3, "exports[0].name", "contains a NUL byte"},
	{"description too long", "version: 1\nexports:\n  - name: a\n    path: /a\n    description: " + strings.Repeat("d", MaxNameLen+1) + "\n",
		5, "exports[0].description", "max 4096"},
}

func TestParseNames(t *testing.T) { runErrorTests(t, nameTests) }

var pathTests = []errorTest{
	{"two %s", `version: 1
exports:
  - name: a
    path: /srv/%s/%s.img
`, 4, "exports[0].path", "has 2 %s; at most one"},
	{"other verb", `version: 1
exports:
  - name: a
    path: /srv/%d.img
`, 4, "exports[0].path", `has "%d"`},
	{"trailing percent", `version: 1
exports:
  - name: a
    path: /srv/100%
`, 4, "exports[0].path", `has "%"`},
	{"NUL", `version: 1
exports:
  - name: a
    path: "/a\0"
`, 4, "exports[0].path", "contains a NUL byte"},
}

func TestParsePathPattern(t *testing.T) { runErrorTests(t, pathTests) }

var limitTests = []errorTest{
	{"max_connections zero", `version: 1
limits:
  max_connections: 0
`, 3, "limits.max_connections", "0 is below 1"},
	{"max_connections negative", `version: 1
limits:
  max_connections: -5
`, 3, "limits.max_connections", "-5 is below 1"},
	{"max_in_flight zero", `version: 1
limits:
  max_in_flight: 0
`, 3, "limits.max_in_flight", "0 is below 1"},
	{"handshake_timeout zero", `version: 1
limits:
  handshake_timeout: 0s
`, 3, "limits.handshake_timeout", "0s is not positive"},
	{"handshake_timeout negative", `version: 1
limits:
  handshake_timeout: -1s
`, 3, "limits.handshake_timeout", "-1s is not positive"},
	{"export max_connections", `version: 1
exports:
  - name: a
    path: /a
    max_connections: -1
`, 5, "exports[0].max_connections", "-1 is negative"},
	{"idle_timeout", `version: 1
exports:
  - name: a
    path: /a
    idle_timeout: -5m
`, 5, "exports[0].idle_timeout", "-5m0s is negative"},
}

func TestParseLimits(t *testing.T) { runErrorTests(t, limitTests) }

var discoveryTests = []errorTest{
	{"interface twice", `version: 1
discovery:
  interfaces: [eth0, wlan0, eth0]
`, 3, "discovery.interfaces[2]", "listed twice"},
	{"interface too long", `version: 1
discovery:
  interfaces:
    - enx00e04c680001abc
`, 4, "discovery.interfaces[0]", "at most 15"},
	{"interface empty", `version: 1
discovery:
  interfaces: [""]
`, 3, "discovery.interfaces[0]", "is empty"},
	{"board too long", "version: 1\ndiscovery:\n  board: " + strings.Repeat("b", 250) + "\n",
		3, "discovery.board", "is 250 bytes long"},
}

func TestParseDiscovery(t *testing.T) { runErrorTests(t, discoveryTests) }

// allErrorTests is every table above, to seed the fuzzer.
func allErrorTests() [][]errorTest {
	return [][]errorTest{
		syntaxTests, unknownKeyTests, wrongTypeTests, versionTests,
		missingTests, duplicateTests, allowTests, listenTests, sizeTests,
		copyOnWriteTests, enumTests, nameTests, pathTests, limitTests,
		discoveryTests,
	}
}

// TestParseAllProblems checks that Parse reports every problem, in line
// order, not only the first.
func TestParseAllProblems(t *testing.T) {
	in := `version: 1
listen: [":99999"]
log:
  level: loud
exports:
  - name: a
    path: /srv/%x
    readonly: maybe
  - name: a
    path: /b
    allow: [300.0.0.0/8]
`
	_, err := Parse([]byte(in), "c.yaml")
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Parse(%q) error = %v, want Errors", in, err)
	}
	var got []string
	for _, e := range errs {
		got = append(got, fmt.Sprintf("%d %s", e.Line, e.Key))
	}
	want := []string{
		"2 listen[0]",
		"4 log.level",
		"7 exports[0].path",
		"8 exports[0].readonly",
		"9 exports[1].name",
		"11 exports[1].allow[0]",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Parse(%q) problems =\n%s\nwant\n%s\nerror:\n%v", in, strings.Join(got, "\n"), strings.Join(want, "\n"), err)
	}
	if n := strings.Count(err.Error(), "\n") + 1; n != len(want) {
		t.Errorf("Parse(%q) error has %d lines, want %d:\n%v", in, n, len(want), err)
	}
}

func TestErrorString(t *testing.T) {
	tests := []struct {
		e    Error
		want string
	}{
		{Error{File: "c.yaml", Line: 7, Key: "exports[1].allow[0]", Msg: "bad"}, "c.yaml:7: exports[1].allow[0]: bad"},
		{Error{File: "c.yaml", Key: "version", Msg: "missing"}, "c.yaml: version: missing"},
		{Error{Line: 3, Key: "log.level", Msg: "bad"}, "line 3: log.level: bad"},
		{Error{Key: "exports[0].name", Msg: "missing"}, "exports[0].name: missing"},
		{Error{File: "c.yaml", Line: 2, Msg: "YAML syntax: x"}, "c.yaml:2: YAML syntax: x"},
	}
	for _, tt := range tests {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("(%+v).Error() = %q, want %q", tt.e, got, tt.want)
		}
	}
}

func TestKeyLess(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"exports[0].allow[2]", "exports[0].allow[10]", true},
		{"exports[0].allow[10]", "exports[0].allow[2]", false},
		{"exports[2].name", "exports[10].name", true},
		{"exports[1].name", "exports[1].path", true},
		{"listen[0]", "listen[0]", false},
		{"", "version", true},
		{"log", "log.level", true},
	}
	for _, tt := range tests {
		if got := keyLess(tt.a, tt.b); got != tt.want {
			t.Errorf("keyLess(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

// TestParseOneLineOrder checks that problems in one flow list come in list
// order, whichever stage found them.
func TestParseOneLineOrder(t *testing.T) {
	in := "version: 1\nexports: [{name: a, path: /a, allow: [10.0.0.1/8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10.0.0.0/33]}]\n"
	_, err := Parse([]byte(in), "c.yaml")
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 11 {
		t.Fatalf("Parse(%q) error = %v, want 11 problems", in, err)
	}
	for i, e := range errs {
		if want := fmt.Sprintf("exports[0].allow[%d]", i); e.Key != want {
			t.Errorf("Parse(%q) problem %d is %q, want %q", in, i, e.Key, want)
		}
	}
}

// TestErrorsAs checks that errors.As finds the first problem, for callers
// that want one *Error.
func TestErrorsAs(t *testing.T) {
	_, err := Parse([]byte("version: 1\nlog: {level: loud, format: xml}\n"), "c.yaml")
	var e *Error
	if !errors.As(err, &e) || e.Line != 2 || e.Key != "log.format" {
		t.Errorf("errors.As(%v) = %+v, want the problem with log.format on line 2", err, e)
	}
}

func TestQuote(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"short", `"short"`},
		{strings.Repeat("a", 64), `"` + strings.Repeat("a", 64) + `"`},
		{strings.Repeat("a", 65), `"` + strings.Repeat("a", 64) + `"...`},
		{strings.Repeat("a", 63) + "☃☃", `"` + strings.Repeat("a", 63) + `"...`}, // not half a snowman
	}
	for _, tt := range tests {
		if got := quote(tt.in); got != tt.want {
			t.Errorf("quote(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

// TestValidateText checks strings that only code can make: YAML text is
// always UTF-8.
func TestValidateText(t *testing.T) {
	c := Default()
	c.Discovery.Board = "rack\xff"
	c.Discovery.Instance = "a\x00b"
	e := DefaultExport()
	e.Name, e.Path, e.Description = "a\xff", "/a", "b\xfe"
	c.Exports = []Export{e}
	err := c.Validate()
	for _, want := range []string{
		`discovery.board: "rack\xff" is not valid UTF-8`,
		`discovery.instance: "a\x00b" contains a NUL byte`,
		`exports[0].name: "a\xff" is not valid UTF-8`,
		`exports[0].description: "b\xfe" is not valid UTF-8`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want a line %s", err, want)
		}
	}
}
