package discovery

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"boardnbd/discovery/discoverytest"
)

// The exports of the interop tests: one plain, one whose name has a dot
// and a space.
var (
	rootfs = Export{Name: "rootfs", Description: "Debian 13 arm64", Size: 8 << 30, ReadOnly: true, BlockSize: 512}
	dotted = Export{Name: "img.v2 lab", Size: 1 << 20, TLS: true}
	late   = Export{Name: "late", Size: 4096}
)

// checkFound checks that Browse found exactly the exports, from host
// "boarda" on 10.231.0.1 and a link-local IPv6 address, with their TXT.
func checkFound(found []Found, host string, exports ...Export) error {
	if len(found) != len(exports) {
		return fmt.Errorf("found %d exports, want %d: %+v", len(found), len(exports), found)
	}
	for _, e := range exports {
		i := slices.IndexFunc(found, func(f Found) bool { return f.Export == e.Name })
		if i < 0 {
			return fmt.Errorf("export %q not found in %+v", e.Name, found)
		}
		f := found[i]
		if want := e.Name + " on " + host; f.Instance != want {
			return fmt.Errorf("instance %q, want %q", f.Instance, want)
		}
		if f.Port != DefaultPort || f.Size != e.Size || f.ReadOnly != e.ReadOnly || f.TLS != e.TLS ||
			f.Description != e.Description || f.BlockSize != e.BlockSize || f.Board != "lab bench 3" {
			return fmt.Errorf("export %q: found %+v, want %+v on port %d, board \"lab bench 3\"", e.Name, f, e, DefaultPort)
		}
		if f.TXT["txtvers"] != "1" {
			return fmt.Errorf("export %q: txtvers %q", e.Name, f.TXT["txtvers"])
		}
		var v4, ll bool
		for _, a := range f.Addrs {
			if a.IsLoopback() {
				return fmt.Errorf("export %q advertised loopback %v", e.Name, a)
			}
			v4 = v4 || a == netip.MustParseAddr(addrA)
			ll = ll || (a.Is6() && a.IsLinkLocalUnicast() && a.Zone() != "")
		}
		if !v4 || !ll {
			return fmt.Errorf("export %q: addresses %v, want %s and a zoned link-local IPv6", e.Name, f.Addrs, addrA)
		}
	}
	return nil
}

// checkAvahi checks that avahi-browse resolved every export on IPv4 to
// 10.231.0.1 port 10809 with its TXT, and nothing else of ours.
func checkAvahi(entries []avahiEntry, host string, exports ...Export) error {
	var names []string
	for _, e := range entries {
		if !slices.Contains(names, e.Name) {
			names = append(names, e.Name)
		}
	}
	if len(names) != len(exports) {
		return fmt.Errorf("avahi-browse resolved %q, want %d exports", names, len(exports))
	}
	for _, e := range exports {
		want := e.Name + " on " + host
		// avahi may report a resolution on the IPv4 link with A's IPv6
		// link-local address; require the IPv4 address on one of them.
		var got []avahiEntry
		for _, a := range entries {
			if a.Name == want {
				got = append(got, a)
			}
		}
		i := slices.IndexFunc(got, func(a avahiEntry) bool { return a.Addr == addrA })
		if i < 0 {
			return fmt.Errorf("no resolution of %q to %s in %+v", want, addrA, entries)
		}
		for _, a := range got {
			if a.Port != DefaultPort || !slices.Contains(a.TXT, "export="+e.Name) || !slices.Contains(a.TXT, "txtvers=1") {
				return fmt.Errorf("%q resolved to %+v, want port %d and TXT export=%s", want, a, DefaultPort, e.Name)
			}
		}
	}
	return nil
}

// TestBuiltinInterop runs the built-in responder in namespace A ("auto"
// with no system bus, so it must pick builtin) and checks, from
// namespace B, that Browse and avahi-browse see the exports, a late one
// and its removal live, a dot-and-space name intact, an address added to
// the interface re-announced, and everything gone within seconds of
// Close.
func TestBuiltinInterop(t *testing.T) {
	needRoot(t, "avahi-daemon", "avahi-browse", "dbus-daemon")
	l := discoverytest.NewLab(t, addrA, addrB)
	avahiB := discoverytest.StartAvahi(t, l.NSB, l.VethB, "boardb")

	adv := startAdvertiser(t, l.NSA, Config{Backend: BackendAuto, Host: "boarda", Board: "lab bench 3"},
		"DBUS_SYSTEM_BUS_ADDRESS=unix:path=/nonexistent/bus")
	if adv.backend != BackendBuiltin {
		t.Fatalf("auto without a system bus chose %q, want builtin", adv.backend)
	}
	adv.update(rootfs, dotted)
	bcfg := BrowseConfig{Interfaces: []string{l.VethB}, Timeout: 1500 * time.Millisecond}

	t.Run("Browse", func(t *testing.T) {
		discoverytest.WaitFor(t, 15*time.Second, "Browse finding both exports", func() (bool, string) {
			err := checkFound(browse(t, l.NSB, bcfg), "boarda", rootfs, dotted)
			return err == nil, fmt.Sprint(err)
		})
	})
	t.Run("avahi-browse", func(t *testing.T) {
		discoverytest.WaitFor(t, 15*time.Second, "avahi-browse resolving both exports", func() (bool, string) {
			entries, out := avahiBrowse(t, l.NSB, avahiB)
			err := checkAvahi(entries, "boarda", rootfs, dotted)
			return err == nil, fmt.Sprintf("%v\n%s", err, out)
		})
	})
	t.Run("live update", func(t *testing.T) {
		lines := watchAvahi(t, l.NSB, avahiB)
		waitLine(t, lines, "=;", "IPv4;rootfs\\032on\\032boarda;")
		adv.update(rootfs, dotted, late)
		waitLine(t, lines, "=;", "IPv4;late\\032on\\032boarda;")
		adv.update(rootfs, dotted)
		waitLine(t, lines, "-;", "IPv4;late\\032on\\032boarda;")
	})
	t.Run("address change", func(t *testing.T) {
		const extra = "10.231.0.11"
		cfg, _ := json.Marshal(listenConfig{Iface: l.VethB, Addr: netip.MustParseAddr(extra), Timeout: 3*pollInterval + 5*time.Second})
		listen := discoverytest.Command(l.NSB, []string{helperEnv + "=listen", helperConfigEnv + "=" + string(cfg)}, os.Args[0], "-test.run=^$")
		out, err := listen.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		listen.Stderr = &testLogWriter{t: t, prefix: "listen: "}
		if err := listen.Start(); err != nil {
			t.Fatal(err)
		}
		discoverytest.StopAtCleanup(t, listen)
		sc := bufio.NewScanner(out)
		if !sc.Scan() || sc.Text() != "listening" {
			t.Fatalf("listen helper: %q", sc.Text())
		}
		if out, err := exec.Command("ip", "-n", l.NSA, "addr", "add", extra+"/24", "dev", l.VethA).CombinedOutput(); err != nil {
			t.Fatalf("ip addr add: %v\n%s", err, out)
		}
		if err := listen.Wait(); err != nil {
			t.Fatalf("no unsolicited announcement of %s after adding it: %v", extra, err)
		}
	})
	t.Run("goodbye on Close", func(t *testing.T) {
		closed := time.Now()
		adv.close()
		// Without goodbyes avahi-daemon would keep the records for their
		// TTLs: 120 s and 75 minutes.
		discoverytest.WaitFor(t, 10*time.Second, "exports gone from avahi-browse", func() (bool, string) {
			entries, out := avahiBrowse(t, l.NSB, avahiB)
			return len(entries) == 0, out
		})
		t.Logf("gone from avahi-browse %v after Close", time.Since(closed).Round(100*time.Millisecond))
		if found := browse(t, l.NSB, BrowseConfig{Interfaces: []string{l.VethB}, Timeout: 500 * time.Millisecond}); len(found) != 0 {
			t.Errorf("Browse after Close found %+v, want nothing", found)
		}
	})
}

// TestAvahiBackend runs avahi-daemon in both namespaces; "auto" in A must
// pick avahi, and both namespaces, with avahi-browse and with Browse
// (which shares its host with avahi-daemon), find the exports.
func TestAvahiBackend(t *testing.T) {
	needRoot(t, "avahi-daemon", "avahi-browse", "dbus-daemon")
	l := discoverytest.NewLab(t, addrA, addrB)
	avahiA := discoverytest.StartAvahi(t, l.NSA, l.VethA, "boarda")
	avahiB := discoverytest.StartAvahi(t, l.NSB, l.VethB, "boardb")

	adv := startAdvertiser(t, l.NSA, Config{Backend: BackendAuto, Host: "boarda", Board: "lab bench 3"}, avahiA.Env())
	if adv.backend != BackendAvahi {
		t.Fatalf("auto with avahi-daemon on the bus chose %q, want avahi", adv.backend)
	}
	adv.update(rootfs, dotted)

	for _, ns := range []struct {
		name string
		ns   string
		d    *discoverytest.Avahi
	}{{"B", l.NSB, avahiB}, {"A", l.NSA, avahiA}} {
		t.Run("avahi-browse in "+ns.name, func(t *testing.T) {
			discoverytest.WaitFor(t, 15*time.Second, "avahi-browse resolving both exports", func() (bool, string) {
				entries, out := avahiBrowse(t, ns.ns, ns.d)
				err := checkAvahi(entries, "boarda", rootfs, dotted)
				return err == nil, fmt.Sprintf("%v\n%s", err, out)
			})
		})
	}
	t.Run("Browse in B", func(t *testing.T) {
		discoverytest.WaitFor(t, 15*time.Second, "Browse finding both exports", func() (bool, string) {
			err := checkFound(browse(t, l.NSB, BrowseConfig{Interfaces: []string{l.VethB}, Timeout: 1500 * time.Millisecond}), "boarda", rootfs, dotted)
			return err == nil, fmt.Sprint(err)
		})
	})
	t.Run("Browse in A beside avahi-daemon", func(t *testing.T) {
		discoverytest.WaitFor(t, 15*time.Second, "Browse finding both exports", func() (bool, string) {
			err := checkFound(browse(t, l.NSA, BrowseConfig{Interfaces: []string{l.VethA}, Timeout: 1500 * time.Millisecond}), "boarda", rootfs, dotted)
			return err == nil, fmt.Sprint(err)
		})
	})
	t.Run("live update", func(t *testing.T) {
		lines := watchAvahi(t, l.NSB, avahiB)
		waitLine(t, lines, "=;", "IPv4;rootfs\\032on\\032boarda;")
		adv.update(rootfs, dotted, late)
		waitLine(t, lines, "=;", "IPv4;late\\032on\\032boarda;")
	})
	t.Run("goodbye on Close", func(t *testing.T) {
		adv.close()
		closed := time.Now()
		discoverytest.WaitFor(t, 10*time.Second, "exports gone from avahi-browse in B", func() (bool, string) {
			entries, out := avahiBrowse(t, l.NSB, avahiB)
			return len(entries) == 0, out
		})
		t.Logf("gone from avahi-browse %v after Close", time.Since(closed).Round(100*time.Millisecond))
	})
}

// watchAvahi starts a long-running avahi-browse -rpk _nbd._tcp in ns and
// returns its output lines.
func watchAvahi(t *testing.T, ns string, d *discoverytest.Avahi) <-chan string {
	t.Helper()
	cmd := discoverytest.Command(ns, []string{d.Env()}, "avahi-browse", "-rpk", "_nbd._tcp")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	discoverytest.StopAtCleanup(t, cmd)
	lines := make(chan string, 256)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default: // the test stopped reading
			}
		}
	}()
	return lines
}

// waitLine waits at most 10 s for a line with the prefix that contains
// part.
func waitLine(t *testing.T, lines <-chan string, prefix, part string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	var seen []string
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("avahi-browse exited; saw:\n%s", strings.Join(seen, "\n"))
			}
			seen = append(seen, l)
			if strings.HasPrefix(l, prefix) && strings.Contains(l, part) {
				return
			}
		case <-timeout:
			t.Fatalf("avahi-browse printed no %q line with %q in 10 s; saw:\n%s", prefix, part, strings.Join(seen, "\n"))
		}
	}
}

// TestAvahiCollision publishes "rootfs on boarda" from namespace B first;
// the avahi backend in A must take avahi's alternative name and still
// advertise the export.
func TestAvahiCollision(t *testing.T) {
	needRoot(t, "avahi-daemon", "avahi-browse", "avahi-publish", "dbus-daemon")
	l := discoverytest.NewLab(t, addrA, addrB)
	avahiA := discoverytest.StartAvahi(t, l.NSA, l.VethA, "boarda")
	avahiB := discoverytest.StartAvahi(t, l.NSB, l.VethB, "boardb")

	squatter := discoverytest.Command(l.NSB, []string{avahiB.Env()}, "avahi-publish", "-s", "rootfs on boarda", "_nbd._tcp", "1234", "squatter=1")
	squatter.Stderr = &testLogWriter{t: t, prefix: "avahi-publish: "}
	if err := squatter.Start(); err != nil {
		t.Fatal(err)
	}
	discoverytest.StopAtCleanup(t, squatter)
	discoverytest.WaitFor(t, 15*time.Second, "the squatter in avahi-browse", func() (bool, string) {
		entries, out := avahiBrowse(t, l.NSB, avahiB)
		return slices.ContainsFunc(entries, func(e avahiEntry) bool { return e.Name == "rootfs on boarda" }), out
	})

	adv := startAdvertiser(t, l.NSA, Config{Backend: BackendAvahi, Host: "boarda", Board: "lab bench 3"}, avahiA.Env())
	adv.update(rootfs)
	discoverytest.WaitFor(t, 20*time.Second, "rootfs under a new name beside the squatter", func() (bool, string) {
		entries, out := avahiBrowse(t, l.NSB, avahiB)
		var ours, theirs bool
		for _, e := range entries {
			if e.Proto != "IPv4" {
				continue
			}
			theirs = theirs || (e.Name == "rootfs on boarda" && e.Port == 1234)
			ours = ours || (strings.HasPrefix(e.Name, "rootfs on boarda #") && e.Port == DefaultPort &&
				e.Addr == addrA && slices.Contains(e.TXT, "export=rootfs"))
		}
		return ours && theirs, out
	})
}
