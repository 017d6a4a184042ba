package discoverytest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dbus "github.com/godbus/dbus/v5"
)

var labSeq atomic.Int32

// Lab is two network namespaces, A and B, joined by a veth pair with an
// IPv4 address and an IPv6 link-local address on each end.
type Lab struct {
	NSA, NSB     string
	VethA, VethB string
	LinkLocalA   string // the IPv6 link-local address of VethA
}

// NewLab creates the namespaces and the veth pair, gives its ends addrA
// and addrB (in a /24), and waits until the link-local addresses are
// usable: duplicate address detection is off, so nothing changes under a
// responder once it runs. The namespaces are deleted at cleanup, after
// the processes the test started there (cleanups run last first).
func NewLab(t testing.TB, addrA, addrB string) *Lab {
	t.Helper()
	id := fmt.Sprintf("%d%d", os.Getpid()%100000, labSeq.Add(1))
	l := &Lab{NSA: "bnbd-a" + id, NSB: "bnbd-b" + id, VethA: "bnA" + id, VethB: "bnB" + id}
	run := func(args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{l.NSA, l.NSB} {
		run("ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
			}
		})
		run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
		run("ip", "-n", ns, "link", "set", "lo", "up")
	}
	run("ip", "link", "add", l.VethA, "netns", l.NSA, "type", "veth", "peer", "name", l.VethB, "netns", l.NSB)
	run("ip", "-n", l.NSA, "addr", "add", addrA+"/24", "dev", l.VethA)
	run("ip", "-n", l.NSB, "addr", "add", addrB+"/24", "dev", l.VethB)
	run("ip", "-n", l.NSA, "link", "set", l.VethA, "up")
	run("ip", "-n", l.NSB, "link", "set", l.VethB, "up")
	for ns, dev := range map[string]string{l.NSA: l.VethA, l.NSB: l.VethB} {
		WaitFor(t, 10*time.Second, "a usable link-local address on "+dev, func() (bool, string) {
			out, _ := exec.Command("ip", "-n", ns, "-6", "addr", "show", "dev", dev, "scope", "link").CombinedOutput()
			s := string(out)
			if ns == l.NSA {
				if _, rest, ok := strings.Cut(s, "inet6 "); ok {
					l.LinkLocalA, _, _ = strings.Cut(rest, "/")
				}
			}
			return strings.Contains(s, "fe80") && !strings.Contains(s, "tentative"), s
		})
	}
	return l
}

// WaitFor polls cond every 100 ms until it holds, or fails the test after
// timeout with cond's last words.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, still waiting for %s; last:\n%s", timeout, what, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Command is a command to run inside namespace ns, with env added to this
// process's environment. "ip netns exec" execs the program, so the PID of
// the started command is the program's.
func Command(ns string, env []string, args ...string) *exec.Cmd {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// StopAtCleanup ends a started command by PID at cleanup: SIGTERM, then
// SIGKILL after three seconds.
func StopAtCleanup(t testing.TB, cmd *exec.Cmd) {
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

// Avahi is an avahi-daemon with a dbus-daemon of its own, in one namespace.
type Avahi struct {
	NS  string
	Bus string // the DBUS_SYSTEM_BUS_ADDRESS of its dbus-daemon
}

// Env is the environment entry that points a client at this daemon.
func (a *Avahi) Env() string { return "DBUS_SYSTEM_BUS_ADDRESS=" + a.Bus }

// busConfig is a system bus that lets everyone do everything.
const busConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
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

// avahiConfig names the daemon's host and keeps it to one interface; no
// rate limit, so that the tests' queries are all answered.
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

// StartAvahi starts dbus-daemon and avahi-daemon in namespace ns, avahi on
// iface only and named host, and returns once avahi runs. Both daemons'
// output is logged if the test fails. avahi-daemon keeps its pid file in
// /run/avahi-daemon, which every namespace shares, so it gets a private
// tmpfs there ("ip netns exec" gives it a mount namespace of its own,
// whose mounts do not propagate back).
func StartAvahi(t testing.TB, ns, iface, host string) *Avahi {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "bus")
	if err := os.WriteFile(filepath.Join(dir, "dbus.conf"), fmt.Appendf(nil, busConfig, sock), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "avahi.conf"), fmt.Appendf(nil, avahiConfig, host, iface), 0o644); err != nil {
		t.Fatal(err)
	}
	log := &lockedBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dbus-daemon and avahi-daemon in %s:\n%s", ns, log)
		}
	})

	dbusd := Command(ns, nil, "dbus-daemon", "--config-file="+filepath.Join(dir, "dbus.conf"), "--nofork", "--nopidfile", "--print-address")
	out, err := dbusd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	dbusd.Stderr = log
	if err := dbusd.Start(); err != nil {
		t.Fatal(err)
	}
	StopAtCleanup(t, dbusd)
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(out).ReadString('\n')
		line <- strings.TrimSpace(l)
		io.Copy(io.Discard, out)
	}()
	a := &Avahi{NS: ns}
	select {
	case a.Bus = <-line:
	case <-time.After(10 * time.Second):
		t.Fatalf("dbus-daemon in %s printed no address in 10 s", ns)
	}
	if a.Bus == "" {
		t.Fatalf("dbus-daemon in %s exited:\n%s", ns, log)
	}

	avahid := Command(ns, []string{a.Env()}, "sh", "-c",
		`mkdir -p /run/avahi-daemon && mount -t tmpfs tmpfs /run/avahi-daemon && exec avahi-daemon --no-drop-root --no-chroot --no-rlimits --no-proc-title -f "$0"`,
		filepath.Join(dir, "avahi.conf"))
	avahid.Stdout, avahid.Stderr = log, log
	if err := avahid.Start(); err != nil {
		t.Fatal(err)
	}
	StopAtCleanup(t, avahid)

	conn, err := dbus.Connect(a.Bus)
	if err != nil {
		t.Fatalf("connect to %s: %v", a.Bus, err)
	}
	defer conn.Close()
	WaitFor(t, 20*time.Second, "a running avahi-daemon in "+ns, func() (bool, string) {
		var state int32
		err := conn.Object("org.freedesktop.Avahi", "/").Call("org.freedesktop.Avahi.Server.GetState", 0).Store(&state)
		return err == nil && state == 2, fmt.Sprintf("state %d, err %v\n%s", state, err, log) // 2: AVAHI_SERVER_RUNNING
	})
	return a
}

// lockedBuffer collects a process's output for the test's log.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
