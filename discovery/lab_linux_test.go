package discovery

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dbus "github.com/godbus/dbus/v5"
)

// The lab: two network namespaces joined by a veth pair,
//
//	A (advertiser) vethA 10.231.0.1/24  <->  vethB 10.231.0.2/24 B (browser)
//
// with IPv6 link-local addresses on both ends. Every process the tests
// start is ended by PID in t.Cleanup, and the namespaces are deleted.

const (
	addrA = "10.231.0.1"
	addrB = "10.231.0.2"
)

// needRoot skips a test that needs root, or fails it in CI, where it
// must run.
func needRoot(t *testing.T, tools ...string) {
	t.Helper()
	fail := t.Skipf
	if os.Getenv("CI") == "true" {
		fail = t.Fatalf
	}
	if os.Geteuid() != 0 {
		fail("needs root for network namespaces")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			fail("needs %s: %v", tool, err)
		}
	}
}

var labSeq atomic.Int32

type lab struct {
	nsA, nsB     string
	vethA, vethB string
}

// newLab creates the two namespaces and the veth pair, and waits until
// the IPv6 link-local addresses are usable.
func newLab(t *testing.T) *lab {
	t.Helper()
	n := labSeq.Add(1)
	id := fmt.Sprintf("%d%d", os.Getpid()%100000, n)
	l := &lab{nsA: "bnbd-a" + id, nsB: "bnbd-b" + id, vethA: "bnA" + id, vethB: "bnB" + id}
	run := func(args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{l.nsA, l.nsB} {
		run("ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		// No duplicate address detection: link-local addresses are usable at once.
		run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
		run("ip", "-n", ns, "link", "set", "lo", "up")
	}
	run("ip", "link", "add", l.vethA, "netns", l.nsA, "type", "veth", "peer", "name", l.vethB, "netns", l.nsB)
	run("ip", "-n", l.nsA, "addr", "add", addrA+"/24", "dev", l.vethA)
	run("ip", "-n", l.nsB, "addr", "add", addrB+"/24", "dev", l.vethB)
	run("ip", "-n", l.nsA, "link", "set", l.vethA, "up")
	run("ip", "-n", l.nsB, "link", "set", l.vethB, "up")
	for ns, dev := range map[string]string{l.nsA: l.vethA, l.nsB: l.vethB} {
		waitFor(t, 10*time.Second, "link-local address on "+dev, func() (bool, string) {
			out, _ := exec.Command("ip", "-n", ns, "-6", "addr", "show", "dev", dev, "scope", "link").CombinedOutput()
			s := string(out)
			return strings.Contains(s, "fe80") && !strings.Contains(s, "tentative"), s
		})
	}
	return l
}

// waitFor polls cond every 100 ms until it holds or timeout passes; then
// the test fails with cond's last words.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, still no %s; last:\n%s", timeout, what, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// start runs a command inside namespace ns and ends it (by PID) at
// cleanup: SIGTERM, then SIGKILL after three seconds.
func start(t *testing.T, ns string, env []string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

func stopAtCleanup(t *testing.T, cmd *exec.Cmd) {
	t.Cleanup(func() {
		if cmd.Process == nil || cmd.ProcessState != nil {
			return
		}
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
}

// advertiser is the advertise helper running in a namespace.
type advertiser struct {
	t       *testing.T
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	replies chan helperReply
	backend string
}

func startAdvertiser(t *testing.T, ns string, cfg Config, env ...string) *advertiser {
	t.Helper()
	cj, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cmd := start(t, ns, append(env, helperEnv+"=advertise", helperConfigEnv+"="+string(cj)), os.Args[0], "-test.run=^$")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &testLogWriter{t: t, prefix: "advertiser: "}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, cmd)
	a := &advertiser{t: t, cmd: cmd, stdin: stdin, replies: make(chan helperReply, 8)}
	go func() {
		defer close(a.replies)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var r helperReply
			if json.Unmarshal(sc.Bytes(), &r) == nil {
				a.replies <- r
			}
		}
	}()
	r := a.reply()
	if r.Err != "" {
		t.Fatalf("New: %s", r.Err)
	}
	a.backend = r.Backend
	return a
}

func (a *advertiser) reply() helperReply {
	a.t.Helper()
	select {
	case r, ok := <-a.replies:
		if !ok {
			a.t.Fatal("advertiser exited")
		}
		return r
	case <-time.After(15 * time.Second):
		a.t.Fatal("advertiser did not answer in 15 s")
	}
	return helperReply{}
}

func (a *advertiser) do(c helperCommand) {
	a.t.Helper()
	b, _ := json.Marshal(c)
	if _, err := a.stdin.Write(append(b, '\n')); err != nil {
		a.t.Fatal(err)
	}
	if r := a.reply(); r.Err != "" {
		a.t.Fatalf("%s: %s", c.Op, r.Err)
	}
}

func (a *advertiser) update(exports ...Export) {
	a.t.Helper()
	a.do(helperCommand{Op: "update", Exports: exports})
}
func (a *advertiser) close() { a.t.Helper(); a.do(helperCommand{Op: "close"}) }

// browse runs Browse inside namespace ns.
func browse(t *testing.T, ns string, cfg BrowseConfig) []Found {
	t.Helper()
	cj, _ := json.Marshal(cfg)
	cmd := start(t, ns, []string{helperEnv + "=browse", helperConfigEnv + "=" + string(cj)}, os.Args[0], "-test.run=^$")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout+10*time.Second)
	defer cancel()
	go func() { <-ctx.Done(); stopProcess(cmd) }()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("Browse in %s: %v\n%s", ns, err, stderr.Bytes())
	}
	var found []Found
	if err := json.Unmarshal(out, &found); err != nil {
		t.Fatalf("Browse output %q: %v", out, err)
	}
	return found
}

func stopProcess(cmd *exec.Cmd) {
	if cmd.Process != nil {
		cmd.Process.Kill()
	}
}

// avahiDaemon is an avahi-daemon with its own dbus-daemon, in one
// namespace.
type avahiDaemon struct {
	bus string // DBUS_SYSTEM_BUS_ADDRESS value
}

func (d *avahiDaemon) env() string { return "DBUS_SYSTEM_BUS_ADDRESS=" + d.bus }

const dbusConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
`

const avahiConfig = `[server]
host-name=%s
use-ipv4=yes
use-ipv6=yes
allow-interfaces=%s
enable-dbus=yes
ratelimit-interval-usec=1000000
ratelimit-burst=1000

[wide-area]
enable-wide-area=no

[publish]
publish-hinfo=no
publish-workstation=no
`

// startAvahi starts dbus-daemon and avahi-daemon inside namespace ns,
// avahi on iface only and named host, and waits until avahi runs.
// avahi-daemon's pid file and socket live in /run/avahi-daemon, shared by
// every namespace, so it gets a private tmpfs there (ip netns exec has
// already given it its own mount namespace).
func startAvahi(t *testing.T, ns, iface, host string) *avahiDaemon {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "bus")
	if err := os.WriteFile(filepath.Join(dir, "dbus.conf"), fmt.Appendf(nil, dbusConfig, sock), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "avahi.conf"), fmt.Appendf(nil, avahiConfig, host, iface), 0o644); err != nil {
		t.Fatal(err)
	}
	dbusd := start(t, ns, nil, "dbus-daemon", "--config-file="+filepath.Join(dir, "dbus.conf"), "--nofork", "--nopidfile", "--print-address")
	out, err := dbusd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	dbusd.Stderr = &testLogWriter{t: t, prefix: ns + " dbus-daemon: "}
	if err := dbusd.Start(); err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, dbusd)
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(out).ReadString('\n')
		line <- strings.TrimSpace(l)
		io.Copy(io.Discard, out)
	}()
	var bus string
	select {
	case bus = <-line:
	case <-time.After(10 * time.Second):
		t.Fatal("dbus-daemon printed no address in 10 s")
	}
	if bus == "" {
		t.Fatal("dbus-daemon exited")
	}
	d := &avahiDaemon{bus: bus}

	avahid := start(t, ns, []string{d.env()}, "sh", "-c",
		`mkdir -p /run/avahi-daemon && mount -t tmpfs tmpfs /run/avahi-daemon && exec avahi-daemon --no-drop-root --no-chroot --no-rlimits --no-proc-title -f "$0"`,
		filepath.Join(dir, "avahi.conf"))
	avahid.Stdout = &testLogWriter{t: t, prefix: ns + " avahi-daemon: "}
	avahid.Stderr = avahid.Stdout
	if err := avahid.Start(); err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, avahid)

	conn, err := dbus.Connect(bus)
	if err != nil {
		t.Fatalf("connect to %s: %v", bus, err)
	}
	defer conn.Close()
	waitFor(t, 20*time.Second, "running avahi-daemon in "+ns, func() (bool, string) {
		var state int32
		err := conn.Object(avahiName, "/").Call("org.freedesktop.Avahi.Server.GetState", 0).Store(&state)
		return err == nil && state == 2, fmt.Sprintf("state %d, err %v", state, err)
	})
	return d
}

// avahiEntry is one resolved line of avahi-browse -p: "=;iface;proto;
// name;type;domain;host;address;port;txt".
type avahiEntry struct {
	Iface, Proto, Name, Host, Addr string
	Port                           int
	TXT                            []string
}

// avahiBrowse runs avahi-browse -rptk _nbd._tcp in namespace ns against
// daemon d and returns the resolved entries.
func avahiBrowse(t *testing.T, ns string, d *avahiDaemon) ([]avahiEntry, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "avahi-browse", "-rptk", "_nbd._tcp")
	cmd.Env = append(os.Environ(), d.env())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("avahi-browse in %s: %v\n%s", ns, err, out)
	}
	var entries []avahiEntry
	for _, line := range strings.Split(string(out), "\n") {
		if e, ok := parseAvahiLine(line); ok && strings.HasPrefix(line, "=") {
			entries = append(entries, e)
		}
	}
	return entries, string(out)
}

// parseAvahiLine reads one line of avahi-browse -p, unescaping the
// instance name (avahi writes \. \\ and \DDD).
func parseAvahiLine(line string) (avahiEntry, bool) {
	f := strings.Split(line, ";")
	if len(f) < 6 {
		return avahiEntry{}, false
	}
	name, _, ok := unescape(f[3], false)
	if !ok {
		return avahiEntry{}, false
	}
	e := avahiEntry{Iface: f[1], Proto: f[2], Name: name}
	if len(f) >= 10 {
		e.Host, e.Addr = f[6], f[7]
		e.Port, _ = strconv.Atoi(f[8])
		txt := strings.Join(f[9:], ";")
		for _, s := range strings.Split(txt, `" "`) {
			e.TXT = append(e.TXT, strings.Trim(s, `"`))
		}
	}
	return e, true
}

// testLogWriter sends a process's output to the test log.
type testLogWriter struct {
	t      *testing.T
	prefix string
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		func() {
			defer func() { recover() }() // the test may have ended
			w.t.Log(w.prefix + line)
		}()
	}
	return len(p), nil
}
