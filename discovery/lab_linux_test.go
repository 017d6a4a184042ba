package discovery

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"boardnbd/discovery/discoverytest"
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
	cmd := discoverytest.Command(ns, append(env, helperEnv+"=advertise", helperConfigEnv+"="+string(cj)), os.Args[0], "-test.run=^$")
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
	discoverytest.StopAtCleanup(t, cmd)
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
	cmd := discoverytest.Command(ns, []string{helperEnv + "=browse", helperConfigEnv + "=" + string(cj)}, os.Args[0], "-test.run=^$")
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

// avahiEntry is one resolved line of avahi-browse -p: "=;iface;proto;
// name;type;domain;host;address;port;txt".
type avahiEntry struct {
	Iface, Proto, Name, Host, Addr string
	Port                           int
	TXT                            []string
}

// avahiBrowse runs avahi-browse -rptk _nbd._tcp in namespace ns against
// daemon d and returns the resolved entries.
func avahiBrowse(t *testing.T, ns string, d *discoverytest.Avahi) ([]avahiEntry, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "avahi-browse", "-rptk", "_nbd._tcp")
	cmd.Env = append(os.Environ(), d.Env())
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
