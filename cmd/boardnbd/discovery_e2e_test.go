//go:build linux

package main

// End-to-end tests of discovery with the real binary: "boardnbd serve"
// advertises its exports in one network namespace, and "boardnbd
// discover", avahi-browse and nbdinfo find and use them from another.
//
// The lab is two namespaces joined by a veth pair,
//
//	A (server)  bnA<id> 10.231.9.1/24  <->  bnB<id> 10.231.9.2/24  (browsers) B
//
// so every mDNS packet stays on that pair: the server runs with discovery
// enabled only inside A, never in the root namespace. The server also
// gets its own UTS namespace, named boarda, so that the instance names
// ("%e on %h") and the SRV host are known. Every process is ended by PID
// in t.Cleanup, before the namespaces are deleted.

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"boardnbd/discovery/discoverytest"
)

const (
	discoAddrA = "10.231.9.1"
	discoAddrB = "10.231.9.2"
	discoPort  = 10809
	discoHost  = "boarda" // the server's host name, in its own UTS namespace
	discoBoard = "lab bench 9"
)

// discoExport is one export of a test config and what a browser must see
// of it.
type discoExport struct {
	name, file, desc string
	size             int64
	ro               bool
	allow            string // a CIDR prefix: the export is served to it, never announced
}

// uri is the NBD URI boardnbd discover must print for the export.
func (e discoExport) uri() string {
	return fmt.Sprintf("nbd://%s:%d/%s", discoAddrA, discoPort, strings.ReplaceAll(e.name, " ", "%20"))
}

// The exports of both tests. dotted has a dot and a space in its name and
// random content that is read back across the veth; secret has an allow
// list that admits namespace B, so it is served to B yet never announced.
var (
	discoRootfs = discoExport{name: "rootfs", file: "rootfs.img", desc: "Debian 13 arm64", size: 8 << 20, ro: true}
	discoDotted = discoExport{name: "img.v2 lab", file: "img-v2-lab.img", size: 1 << 20}
	discoSecret = discoExport{name: "secret", file: "secret.img", size: 64 << 10, allow: "10.231.9.0/24"}
	discoLate   = discoExport{name: "late", file: "late.img", desc: "plugged in later", size: 2 << 20}
	discoExtra  = discoExport{name: "extra", file: "extra.img", size: 3 << 20}
)

// discoTools maps the programs the tests run to their Debian packages.
var discoTools = map[string]string{
	"ip":           "iproute2",
	"unshare":      "util-linux",
	"dbus-daemon":  "dbus",
	"avahi-daemon": "avahi-daemon",
	"avahi-browse": "avahi-utils",
	"nbdinfo":      "libnbd-bin",
	"nbdcopy":      "libnbd-bin",
}

// discoNeed skips the test unless it runs as root; a missing program
// skips it too, except in CI, where it fails.
func discoNeed(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for tool, pkg := range discoTools {
		if _, err := exec.LookPath(tool); err != nil {
			missingTool(t, tool, pkg)
		}
	}
}

// discoLab is the namespace pair and a directory for images and config.
type discoLab struct {
	*discoverytest.Lab
	dir string
}

func newDiscoLab(t *testing.T) *discoLab {
	return &discoLab{Lab: discoverytest.NewLab(t, discoAddrA, discoAddrB), dir: t.TempDir()}
}

// path is where the image of e lives.
func (l *discoLab) path(e discoExport) string { return filepath.Join(l.dir, e.file) }

// discoStart starts a program inside namespace ns and ends it by PID at
// cleanup: SIGTERM, then SIGKILL after three seconds. "ip netns exec"
// execs the program, so the PID is the program's.
func discoStart(t *testing.T, ns string, env []string, stdout, stderr io.Writer, args ...string) (*exec.Cmd, <-chan struct{}) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", strings.Join(args, " "), err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		for _, w := range []io.Writer{stdout, stderr} {
			if l, ok := w.(*lineLog); ok {
				l.close() // twice is harmless: waiters see the end
			}
		}
		close(exited)
	}()
	t.Cleanup(func() {
		select {
		case <-exited:
			return
		default:
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(3 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	return cmd, exited
}

// discoEntry is one resolved line of avahi-browse -p:
// "=;iface;proto;name;type;domain;host;address;port;txt".
type discoEntry struct {
	Iface, Proto, Name, Host, Addr string
	Port                           int
	TXT                            map[string]string
}

// parseDiscoLine reads one line of avahi-browse -p: its event ('+' new,
// '-' gone, '=' resolved) and the entry, the name unescaped (avahi writes
// \. \\ and \DDD, decimal).
func parseDiscoLine(line string) (event byte, e discoEntry, ok bool) {
	f := strings.SplitN(line, ";", 10)
	if len(f) < 6 || len(f[0]) != 1 {
		return 0, e, false
	}
	name, ok := discoUnescape(f[3])
	if !ok {
		return 0, e, false
	}
	e = discoEntry{Iface: f[1], Proto: f[2], Name: name}
	if f[0] == "=" && len(f) == 10 {
		e.Host, e.Addr = f[6], f[7]
		e.Port, _ = strconv.Atoi(f[8])
		e.TXT = make(map[string]string)
		if txt := strings.TrimSpace(f[9]); txt != "" {
			for _, s := range strings.Split(strings.Trim(txt, `"`), `" "`) {
				k, v, _ := strings.Cut(s, "=")
				e.TXT[k] = v
			}
		}
	}
	return f[0][0], e, true
}

func discoUnescape(s string) (string, bool) {
	var b []byte
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b = append(b, s[i])
			continue
		}
		if i+3 < len(s) {
			if n, err := strconv.Atoi(s[i+1 : i+4]); err == nil && n <= 255 {
				b = append(b, byte(n))
				i += 3
				continue
			}
		}
		if i+1 >= len(s) {
			return "", false
		}
		b = append(b, s[i+1])
		i++
	}
	return string(b), true
}

// discoAvahiBrowse runs "avahi-browse -rpt _nbd._tcp" against daemon d
// and returns the resolutions, by instance name. avahi resolves each
// instance once per link protocol, to whichever address of the host it
// has: a line of protocol IPv4 may carry the IPv6 address.
func discoAvahiBrowse(t *testing.T, d *discoverytest.Avahi) (map[string][]discoEntry, string) {
	t.Helper()
	r := runTool(t, 20*time.Second, "ip", "netns", "exec", d.NS, "env", d.Env(), "avahi-browse", "-rpt", "_nbd._tcp")
	if r.code != 0 {
		t.Fatalf("avahi-browse in %s:\n%s", d.NS, r)
	}
	entries := make(map[string][]discoEntry)
	for _, line := range strings.Split(r.stdout, "\n") {
		if ev, e, ok := parseDiscoLine(line); ok && ev == '=' {
			entries[e.Name] = append(entries[e.Name], e)
		}
	}
	return entries, r.stdout
}

// discoWatch is a running "avahi-browse -rp _nbd._tcp" (without -t): it
// follows its output and keeps what it lists now.
type discoWatch struct {
	exited <-chan struct{}

	mu       sync.Mutex
	out      strings.Builder            // everything printed, for the log
	partial  []byte                     // an incomplete last line
	listed   map[string]map[string]bool // instance → the "iface/proto" it is listed on
	resolved map[string][]discoEntry    // instance → its resolutions while listed
}

// startDiscoWatch starts avahi-browse -rp _nbd._tcp against daemon d.
func startDiscoWatch(t *testing.T, d *discoverytest.Avahi) *discoWatch {
	t.Helper()
	w := &discoWatch{listed: make(map[string]map[string]bool), resolved: make(map[string][]discoEntry)}
	_, w.exited = discoStart(t, d.NS, []string{d.Env()}, w, newLineLog(), "avahi-browse", "-rp", "_nbd._tcp")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the running avahi-browse -rp printed:\n%s", w)
		}
	})
	return w
}

// Write takes avahi-browse's output and applies each complete line.
func (w *discoWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.out.Write(p)
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(w.partial[:i])
		w.partial = w.partial[i+1:]
		ev, e, ok := parseDiscoLine(line)
		if !ok {
			continue
		}
		where := e.Iface + "/" + e.Proto
		switch ev {
		case '+':
			if w.listed[e.Name] == nil {
				w.listed[e.Name] = make(map[string]bool)
			}
			w.listed[e.Name][where] = true
		case '-':
			delete(w.listed[e.Name], where)
			if len(w.listed[e.Name]) == 0 {
				delete(w.listed, e.Name)
				delete(w.resolved, e.Name)
			}
		case '=':
			if len(w.listed[e.Name]) > 0 {
				w.resolved[e.Name] = append(w.resolved[e.Name], e)
			}
		}
	}
}

func (w *discoWatch) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.out.String()
}

// names returns the instances listed now, sorted.
func (w *discoWatch) names() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var names []string
	for n := range w.listed {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// wait waits until cond holds, at most timeout, and returns how long it
// took. The running avahi-browse must not exit meanwhile.
func (w *discoWatch) wait(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	discoverytest.WaitFor(t, timeout, what+" in the running avahi-browse", func() (bool, string) {
		select {
		case <-w.exited:
			t.Fatalf("the running avahi-browse exited; it printed:\n%s", w)
		default:
		}
		return cond(), fmt.Sprintf("listed: %q", w.names())
	})
	return time.Since(start)
}

// resolves reports whether the watch lists export e's instance, resolved
// to an address of the server (IPv4 or link-local IPv6: avahi picks) and
// its port, with e's TXT export key.
func (w *discoWatch) resolves(l *discoLab, e discoExport) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.ContainsFunc(w.resolved[e.name+" on "+discoHost], func(a discoEntry) bool {
		return (a.Addr == discoAddrA || a.Addr == l.LinkLocalA) && a.Port == discoPort && a.TXT["export"] == e.name
	})
}

// discoServer is "boardnbd serve -c FILE" running in namespace A.
type discoServer struct {
	cmd    *exec.Cmd
	log    *lineLog
	cfg    string
	exited <-chan struct{}
}

// discoConfig renders a config with discovery on.
func discoConfig(l *discoLab, listen, backend string, exports ...discoExport) string {
	var b strings.Builder
	fmt.Fprintf(&b, "version: 1\nlisten: [%q]\n", listen)
	fmt.Fprintf(&b, "discovery: {enabled: true, backend: %s, board: %q}\n", backend, discoBoard)
	b.WriteString("exports:\n")
	for _, e := range exports {
		fmt.Fprintf(&b, "  - name: %q\n    path: %q\n", e.name, l.path(e))
		if e.desc != "" {
			fmt.Fprintf(&b, "    description: %q\n", e.desc)
		}
		if e.ro {
			b.WriteString("    readonly: true\n")
		}
		if e.allow != "" {
			fmt.Fprintf(&b, "    allow: [%q]\n", e.allow)
		}
	}
	return b.String()
}

// discoWriteFile replaces a file atomically, so that the server never
// reads it half written (a reload, a hotplug probe).
func discoWriteFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// startDiscoServer writes config and runs boardnbd serve -c on it in
// namespace A, in a UTS namespace named boarda, and returns once it
// advertises. env is added to the server's environment.
func startDiscoServer(t *testing.T, l *discoLab, config string, env ...string) *discoServer {
	t.Helper()
	bin := boardnbdBinary(t)
	s := &discoServer{log: newLineLog(), cfg: filepath.Join(l.dir, "boardnbd.yaml")}
	discoWriteFile(t, s.cfg, []byte(config))
	// unshare and sh exec too: the PID stays boardnbd's, for signals.
	s.cmd, s.exited = discoStart(t, l.NSA, env, s.log, s.log,
		"unshare", "--uts", "sh", "-c", `hostname "$0" && exec "$@"`, discoHost, bin, "serve", "-c", s.cfg)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("boardnbd serve log:\n%s", s.log)
		}
	})
	if !s.log.waitFor("advertising exports over mDNS", 20*time.Second) {
		t.Fatalf("boardnbd serve did not start advertising; its log:\n%s", s.log)
	}
	if s.log.contains("discovery failed") {
		t.Fatalf("boardnbd serve: discovery failed; its log:\n%s", s.log)
	}
	return s
}

func (s *discoServer) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%v to boardnbd: %v", sig, err)
	}
}

// reload rewrites the config file and sends SIGHUP.
func (s *discoServer) reload(t *testing.T, config string) {
	t.Helper()
	discoWriteFile(t, s.cfg, []byte(config))
	s.signal(t, syscall.SIGHUP)
}

// exitCode waits at most timeout for the server to exit and returns its
// status.
func (s *discoServer) exitCode(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-s.exited:
	case <-time.After(timeout):
		t.Fatalf("boardnbd did not exit within %v", timeout)
	}
	return s.cmd.ProcessState.ExitCode()
}

// checkGoneAfterSIGTERM sends srv SIGTERM and checks that every export
// leaves the running avahi-browse within 5 s, that boardnbd exits 0, and
// that "boardnbd discover" then finds nothing.
func checkGoneAfterSIGTERM(t *testing.T, l *discoLab, srv *discoServer, watch *discoWatch) {
	t.Helper()
	srv.signal(t, syscall.SIGTERM)
	took := watch.wait(t, 5*time.Second, "every export gone after SIGTERM", func() bool {
		return len(watch.names()) == 0
	})
	t.Logf("every export withdrawn %v after SIGTERM", took.Round(100*time.Millisecond))
	if code := srv.exitCode(t, 15*time.Second); code != 0 {
		t.Errorf("boardnbd exited %d after SIGTERM, want 0", code)
	}
	if found := discoDiscover(t, l.NSB, "--timeout", "1s"); len(found) != 0 {
		t.Errorf("boardnbd discover after SIGTERM found %+v, want nothing", found)
	}
}

// discoDiscover runs "boardnbd discover --json ARGS" in namespace ns and
// returns what it printed.
func discoDiscover(t *testing.T, ns string, args ...string) []foundJSON {
	t.Helper()
	r := runTool(t, 30*time.Second, "ip", append([]string{"netns", "exec", ns, boardnbdBinary(t), "discover", "--json"}, args...)...)
	if r.code != 0 {
		t.Fatalf("boardnbd discover --json %s:\n%s", strings.Join(args, " "), r)
	}
	var found []foundJSON
	if err := json.Unmarshal([]byte(r.stdout), &found); err != nil {
		t.Fatalf("boardnbd discover --json printed no JSON array: %v\n%s", err, r)
	}
	return found
}

// checkDiscoFound checks that a browse found exactly the exports, each
// from host boarda.local at 10.231.9.1 port 10809 with its TXT values and
// URI.
func checkDiscoFound(found []foundJSON, want ...discoExport) error {
	var got []string
	for _, f := range found {
		got = append(got, f.Export)
	}
	var names []string
	for _, e := range want {
		names = append(names, e.name)
	}
	sort.Strings(got)
	sort.Strings(names)
	if !slices.Equal(got, names) {
		return fmt.Errorf("found exports %q, want %q", got, names)
	}
	for _, e := range want {
		f := found[slices.IndexFunc(found, func(f foundJSON) bool { return f.Export == e.name })]
		for _, c := range []struct {
			what      string
			got, want any
		}{
			{"instance", f.Instance, e.name + " on " + discoHost},
			{"host", f.Host, discoHost + ".local"},
			{"port", f.Port, discoPort},
			{"size", f.Size, e.size},
			{"readonly", f.ReadOnly, e.ro},
			{"tls", f.TLS, false},
			{"description", f.Description, e.desc},
			{"board", f.Board, discoBoard},
			{"TXT txtvers", f.TXT["txtvers"], "1"},
			{"TXT export", f.TXT["export"], e.name},
			{"TXT size", f.TXT["size"], strconv.FormatInt(e.size, 10)},
			{"TXT ro", f.TXT["ro"], map[bool]string{false: "0", true: "1"}[e.ro]},
			{"TXT tls", f.TXT["tls"], "0"},
			{"uri", f.URI, e.uri()},
		} {
			if c.got != c.want {
				return fmt.Errorf("export %q: %s = %v, want %v (found %+v)", e.name, c.what, c.got, c.want, f)
			}
		}
		if len(f.Addrs) == 0 || f.Addrs[0] != netip.MustParseAddr(discoAddrA) {
			return fmt.Errorf("export %q: addresses %v, want %s first", e.name, f.Addrs, discoAddrA)
		}
		for _, a := range f.Addrs {
			if a.IsLoopback() {
				return fmt.Errorf("export %q: loopback address %v advertised", e.name, a)
			}
		}
	}
	return nil
}

// checkDiscoAvahi checks that avahi-browse resolved exactly the exports,
// each to host boarda.local port 10809 with its TXT, at 10.231.9.1 (and
// perhaps also at A's link-local IPv6 address, but nowhere else).
func checkDiscoAvahi(l *discoLab, entries map[string][]discoEntry, want ...discoExport) error {
	var got, names []string
	for n := range entries {
		got = append(got, n)
	}
	for _, e := range want {
		names = append(names, e.name+" on "+discoHost)
	}
	sort.Strings(got)
	sort.Strings(names)
	if !slices.Equal(got, names) {
		return fmt.Errorf("avahi-browse resolved %q, want %q", got, names)
	}
	for _, e := range want {
		ro := map[bool]string{false: "0", true: "1"}[e.ro]
		v4 := false
		for _, a := range entries[e.name+" on "+discoHost] {
			if (a.Addr != discoAddrA && a.Addr != l.LinkLocalA) || a.Port != discoPort || a.Host != discoHost+".local" ||
				a.TXT["txtvers"] != "1" || a.TXT["export"] != e.name || a.TXT["size"] != strconv.FormatInt(e.size, 10) ||
				a.TXT["ro"] != ro || a.TXT["tls"] != "0" || a.TXT["desc"] != e.desc || a.TXT["board"] != discoBoard {
				return fmt.Errorf("%q resolved to %+v, want %s.local %s (or %s) port %d, TXT export=%s size=%d ro=%s tls=0 desc=%q board=%q",
					a.Name, a, discoHost, discoAddrA, l.LinkLocalA, discoPort, e.name, e.size, ro, e.desc, discoBoard)
			}
			v4 = v4 || a.Addr == discoAddrA
		}
		if !v4 {
			return fmt.Errorf("%q was not resolved to %s: %+v", e.name, discoAddrA, entries[e.name+" on "+discoHost])
		}
	}
	return nil
}

// discoInfo is what the tests read of "nbdinfo --json".
type discoInfo struct {
	Exports []discoInfoExport `json:"exports"`
}

type discoInfoExport struct {
	Name     string `json:"export-name"`
	Desc     string `json:"description"`
	Size     int64  `json:"export-size"`
	ReadOnly bool   `json:"is_read_only"`
	MinBlock uint32 `json:"block_size_minimum"`
}

// discoNbdinfo runs nbdinfo --json ARGS in namespace ns.
func discoNbdinfo(t *testing.T, ns string, args ...string) discoInfo {
	t.Helper()
	r := runTool(t, 30*time.Second, "ip", append([]string{"netns", "exec", ns, "nbdinfo", "--json"}, args...)...)
	if r.code != 0 {
		t.Fatalf("nbdinfo --json %s:\n%s", strings.Join(args, " "), r)
	}
	var info discoInfo
	if err := json.Unmarshal([]byte(r.stdout), &info); err != nil {
		t.Fatalf("nbdinfo --json %s: %v\n%s", strings.Join(args, " "), err, r)
	}
	return info
}

// makeDiscoImages creates the image of each export: random bytes for the
// dotted one (hashed, to be read back), zeroes for the others.
func makeDiscoImages(t *testing.T, l *discoLab, exports ...discoExport) (dottedSHA [32]byte) {
	t.Helper()
	for _, e := range exports {
		if e == discoDotted {
			dottedSHA = writeRandomImage(t, l.path(e), e.size, 9)
			continue
		}
		makeZeroImage(t, l.path(e), e.size)
	}
	return dottedSHA
}

// TestDiscoveryEndToEndBuiltin runs the real binary with the built-in
// responder in namespace A and proves from namespace B, with boardnbd
// discover, avahi-browse and nbdinfo, that it announces exactly the
// exports open to all whose storage is there, that the URIs it makes
// work, that SIGHUP and hotplugged storage change the announcements live,
// and that SIGTERM withdraws them at once (goodbyes) where SIGKILL leaves
// them to their TTL.
func TestDiscoveryEndToEndBuiltin(t *testing.T) {
	discoNeed(t)
	t.Parallel()
	l := newDiscoLab(t)
	dottedSHA := makeDiscoImages(t, l, discoRootfs, discoDotted, discoSecret, discoExtra) // late is absent
	avahiB := discoverytest.StartAvahi(t, l.NSB, l.VethB, "boardb")
	watch := startDiscoWatch(t, avahiB)

	base := []discoExport{discoRootfs, discoDotted, discoSecret, discoLate}
	config := discoConfig(l, discoAddrA+":10809", "builtin", base...)
	srv := startDiscoServer(t, l, config)
	if !srv.log.contains("backend=builtin") {
		t.Fatalf("backend: builtin did not log backend=builtin:\n%s", srv.log)
	}
	advertised := []discoExport{discoRootfs, discoDotted} // not secret (allow list), not late (absent)

	t.Run("discover --json", func(t *testing.T) {
		var found []foundJSON
		discoverytest.WaitFor(t, 15*time.Second, "finding rootfs and img.v2 lab with their TXT", func() (bool, string) {
			found = discoDiscover(t, l.NSB, "--timeout", "2s")
			err := checkDiscoFound(found, advertised...)
			return err == nil, fmt.Sprint(err)
		})
		// The URIs work across the veth; the secret export is served to B
		// (so it is missing from discovery for its allow list alone).
		for _, f := range found {
			e := advertised[slices.IndexFunc(advertised, func(e discoExport) bool { return e.name == f.Export })]
			info := discoNbdinfo(t, l.NSB, f.URI)
			if len(info.Exports) != 1 {
				t.Fatalf("nbdinfo %s: %d exports", f.URI, len(info.Exports))
			}
			x := info.Exports[0]
			if x.Name != e.name || x.Size != e.size || x.ReadOnly != e.ro || x.Desc != e.desc {
				t.Errorf("nbdinfo %s = %+v, want name %q size %d readonly %v description %q", f.URI, x, e.name, e.size, e.ro, e.desc)
			}
			if bs := max(f.BlockSize, 1); x.MinBlock != bs {
				t.Errorf("%s: TXT bs says %d, NBD_INFO_BLOCK_SIZE %d", f.URI, bs, x.MinBlock)
			}
		}
		dotted := found[slices.IndexFunc(found, func(f foundJSON) bool { return f.Export == discoDotted.name })]
		r := runTool(t, 30*time.Second, "ip", "netns", "exec", l.NSB, "nbdcopy", dotted.URI, "-")
		if r.code != 0 {
			t.Fatalf("nbdcopy %s -:\n%s", dotted.URI, r)
		}
		if sha256.Sum256([]byte(r.stdout)) != dottedSHA {
			t.Errorf("nbdcopy %s read %d bytes that differ from the image", dotted.URI, len(r.stdout))
		}
		if info := discoNbdinfo(t, l.NSB, discoSecret.uri()); len(info.Exports) != 1 || info.Exports[0].Size != discoSecret.size {
			t.Errorf("nbdinfo %s from B, which its allow list admits = %+v, want one export of %d bytes", discoSecret.uri(), info.Exports, discoSecret.size)
		}
	})

	t.Run("avahi-browse -rpt", func(t *testing.T) {
		discoverytest.WaitFor(t, 15*time.Second, "avahi-browse resolving rootfs and img.v2 lab", func() (bool, string) {
			entries, out := discoAvahiBrowse(t, avahiB)
			err := checkDiscoAvahi(l, entries, advertised...)
			return err == nil, fmt.Sprintf("%v\n%s", err, out)
		})
	})

	t.Run("hotplug", func(t *testing.T) {
		watch.wait(t, 10*time.Second, "rootfs and img.v2 lab resolved", func() bool {
			return watch.resolves(l, discoRootfs) && watch.resolves(l, discoDotted)
		})
		if names := watch.names(); slices.Contains(names, discoLate.name+" on "+discoHost) {
			t.Fatalf("late is listed before its image exists: %q", names)
		}
		discoWriteFile(t, l.path(discoLate), make([]byte, discoLate.size))
		took := watch.wait(t, hotplugInterval+4*time.Second, "late resolved after its image appeared", func() bool {
			return watch.resolves(l, discoLate)
		})
		t.Logf("late announced %v after its image appeared (hotplug probe every %v)", took.Round(100*time.Millisecond), hotplugInterval)
		// A netboot script waits for it by name on one interface.
		found := discoDiscover(t, l.NSB, "--wait", discoLate.name, "--timeout", "10s", "--interface", l.VethB)
		if err := checkDiscoFound(found, discoLate); err != nil {
			t.Error(err)
		}
	})
	advertised = append(advertised, discoLate)

	t.Run("SIGHUP", func(t *testing.T) {
		srv.reload(t, discoConfig(l, discoAddrA+":10809", "builtin", append(base, discoExtra)...))
		took := watch.wait(t, 10*time.Second, "extra resolved after SIGHUP added it", func() bool {
			return watch.resolves(l, discoExtra)
		})
		t.Logf("extra announced %v after SIGHUP", took.Round(100*time.Millisecond))
		if err := checkDiscoFound(discoDiscover(t, l.NSB, "--timeout", "2s"), append(advertised, discoExtra)...); err != nil {
			t.Error(err)
		}
		srv.reload(t, config)
		took = watch.wait(t, 10*time.Second, "extra gone after SIGHUP removed it", func() bool {
			return !slices.Contains(watch.names(), discoExtra.name+" on "+discoHost)
		})
		t.Logf("extra withdrawn %v after SIGHUP", took.Round(100*time.Millisecond))
		if names := watch.names(); len(names) != len(advertised) {
			t.Errorf("after removing extra, avahi-browse lists %q, want %d exports", names, len(advertised))
		}
		if srv.log.contains("reload rejected") {
			t.Errorf("a reload was rejected:\n%s", srv.log)
		}
	})

	terminated := t.Run("SIGTERM goodbyes", func(t *testing.T) {
		watch.wait(t, 10*time.Second, "every export resolved", func() bool {
			return watch.resolves(l, discoRootfs) && watch.resolves(l, discoDotted) && watch.resolves(l, discoLate)
		})
		// Without goodbyes avahi-daemon keeps the records for their TTLs
		// (120 s and 75 min); the control below shows it.
		checkGoneAfterSIGTERM(t, l, srv, watch)
		if entries, out := discoAvahiBrowse(t, avahiB); len(entries) != 0 {
			t.Errorf("avahi-browse -rpt after SIGTERM still resolves exports:\n%s", out)
		}
	})

	t.Run("control: SIGKILL sends no goodbye", func(t *testing.T) {
		if !terminated {
			t.Skip("the server may still run: SIGTERM goodbyes failed")
		}
		killed := startDiscoServer(t, l, config)
		watch.wait(t, 10*time.Second, "rootfs resolved again", func() bool { return watch.resolves(l, discoRootfs) })
		killed.signal(t, syscall.SIGKILL)
		killed.exitCode(t, 5*time.Second)
		time.Sleep(5 * time.Second) // as long as SIGTERM was given, and more
		if names := watch.names(); !slices.Contains(names, discoRootfs.name+" on "+discoHost) {
			t.Errorf("5 s after SIGKILL avahi-browse lists %q: records vanished without goodbyes, so the SIGTERM test proves nothing", names)
		}
	})
}

// TestDiscoveryEndToEndAvahi runs avahi-daemon in both namespaces; the
// real binary in A with backend auto must publish through A's daemon,
// and the exports must be found from both namespaces, then withdrawn on
// SIGTERM.
func TestDiscoveryEndToEndAvahi(t *testing.T) {
	discoNeed(t)
	t.Parallel()
	l := newDiscoLab(t)
	makeDiscoImages(t, l, discoRootfs, discoDotted, discoSecret)
	avahiA := discoverytest.StartAvahi(t, l.NSA, l.VethA, discoHost)
	avahiB := discoverytest.StartAvahi(t, l.NSB, l.VethB, "boardb")
	watch := startDiscoWatch(t, avahiB)

	srv := startDiscoServer(t, l, discoConfig(l, ":10809", "auto", discoRootfs, discoDotted, discoSecret), avahiA.Env())
	if !srv.log.contains("backend=avahi") {
		t.Fatalf("backend auto beside a running avahi-daemon did not log backend=avahi:\n%s", srv.log)
	}
	advertised := []discoExport{discoRootfs, discoDotted}

	for _, d := range []struct {
		name  string
		avahi *discoverytest.Avahi
	}{{"A", avahiA}, {"B", avahiB}} {
		t.Run("avahi-browse in "+d.name, func(t *testing.T) {
			discoverytest.WaitFor(t, 15*time.Second, "avahi-browse resolving rootfs and img.v2 lab", func() (bool, string) {
				entries, out := discoAvahiBrowse(t, d.avahi)
				err := checkDiscoAvahi(l, entries, advertised...)
				return err == nil, fmt.Sprintf("%v\n%s", err, out)
			})
		})
	}
	t.Run("discover --json in B", func(t *testing.T) {
		var found []foundJSON
		discoverytest.WaitFor(t, 15*time.Second, "finding rootfs and img.v2 lab with their TXT", func() (bool, string) {
			found = discoDiscover(t, l.NSB, "--timeout", "2s")
			err := checkDiscoFound(found, advertised...)
			return err == nil, fmt.Sprint(err)
		})
		info := discoNbdinfo(t, l.NSB, discoDotted.uri())
		if len(info.Exports) != 1 || info.Exports[0].Size != discoDotted.size {
			t.Errorf("nbdinfo %s = %+v, want one export of %d bytes", discoDotted.uri(), info.Exports, discoDotted.size)
		}
	})
	t.Run("SIGTERM goodbyes", func(t *testing.T) {
		watch.wait(t, 10*time.Second, "rootfs and img.v2 lab resolved", func() bool {
			return watch.resolves(l, discoRootfs) && watch.resolves(l, discoDotted)
		})
		// avahi-daemon also withdraws the entry group of a client that
		// leaves the bus, so here this proves the withdrawal and the exit
		// status; the built-in test's control proves the goodbyes.
		checkGoneAfterSIGTERM(t, l, srv, watch)
	})
}
