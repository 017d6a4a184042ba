package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"boardnbd/discovery"
)

var discoverFixture = []discovery.Found{
	{
		Instance: "rootfs on boarda", Export: "rootfs", Host: "boarda.local",
		Addrs: []netip.Addr{netip.MustParseAddr("10.231.0.1"), netip.MustParseAddr("fe80::1%eth0")},
		Port:  10809, Size: 8 << 30, ReadOnly: true, BlockSize: 512, Description: "Debian 13",
		TXT: map[string]string{"txtvers": "1", "export": "rootfs"},
	},
	{
		Instance: "img.v2 lab on boarda", Export: "img.v2 lab", Host: "boarda.local",
		Addrs: []netip.Addr{netip.MustParseAddr("fe80::1%eth0")}, Port: 10809, TLS: true,
	},
}

// fakeBrowse replaces discovery.Browse for one test: the n-th call
// (from 0) returns results(n).
func fakeBrowse(t *testing.T, results func(n int, cfg discovery.BrowseConfig) ([]discovery.Found, error)) *atomic.Int32 {
	t.Helper()
	var calls atomic.Int32
	old := browseFunc
	browseFunc = func(ctx context.Context, cfg discovery.BrowseConfig) ([]discovery.Found, error) {
		return results(int(calls.Add(1)-1), cfg)
	}
	t.Cleanup(func() { browseFunc = old })
	return &calls
}

func runDiscover(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = cmdDiscover(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestDiscoverTable(t *testing.T) {
	var got discovery.BrowseConfig
	fakeBrowse(t, func(_ int, cfg discovery.BrowseConfig) ([]discovery.Found, error) {
		got = cfg
		return discoverFixture, nil
	})
	code, out, errs := runDiscover("--interface", "eth0,usb0", "--interface", "wlan0", "--timeout", "5s")
	if code != 0 {
		t.Fatalf("discover = %d, stderr %q", code, errs)
	}
	if want := []string{"eth0", "usb0", "wlan0"}; !slices.Equal(got.Interfaces, want) || got.Timeout != 5*time.Second {
		t.Errorf("BrowseConfig = %+v, want interfaces %v and timeout 5s", got, want)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("table =\n%s\nwant a header and 2 rows", out)
	}
	for _, want := range [][]string{
		{"EXPORT", "HOST", "ADDRESS", "PORT", "SIZE", "RO", "TLS", "URI"},
		{"rootfs", "boarda.local", "10.231.0.1", "10809", "8.0 GiB", "yes", "no", "nbd://10.231.0.1:10809/rootfs"},
		{"img.v2 lab", "boarda.local", "fe80::1%eth0", "10809", "-", "no", "yes", "nbds://[fe80::1%25eth0]:10809/img.v2%20lab"},
	} {
		row := lines[slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, want[0]) })]
		for _, cell := range want {
			if !strings.Contains(row, cell) {
				t.Errorf("row %q lacks %q", row, cell)
			}
		}
	}
}

func TestDiscoverJSON(t *testing.T) {
	fakeBrowse(t, func(int, discovery.BrowseConfig) ([]discovery.Found, error) { return discoverFixture, nil })
	code, out, errs := runDiscover("--json")
	if code != 0 {
		t.Fatalf("discover --json = %d, stderr %q", code, errs)
	}
	var got []struct {
		Export   string       `json:"export"`
		Addrs    []netip.Addr `json:"addrs"`
		Size     int64        `json:"size"`
		ReadOnly bool         `json:"readonly"`
		URI      string       `json:"uri"`
		TXT      map[string]string
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("output %q: %v", out, err)
	}
	if len(got) != 2 || got[0].Export != "rootfs" || got[0].Size != 8<<30 || !got[0].ReadOnly ||
		got[0].URI != "nbd://10.231.0.1:10809/rootfs" || len(got[0].Addrs) != 2 || got[0].TXT["txtvers"] != "1" {
		t.Errorf("JSON = %+v", got)
	}

	fakeBrowse(t, func(int, discovery.BrowseConfig) ([]discovery.Found, error) { return nil, nil })
	if code, out, _ := runDiscover("--json"); code != 0 || strings.TrimSpace(out) != "[]" {
		t.Errorf("discover --json with nothing found = %d, %q; want 0, []", code, out)
	}
}

func TestDiscoverWait(t *testing.T) {
	calls := fakeBrowse(t, func(n int, cfg discovery.BrowseConfig) ([]discovery.Found, error) {
		if cfg.Timeout > discoverRound {
			t.Errorf("round of %v, want at most %v", cfg.Timeout, discoverRound)
		}
		if n < 2 {
			return discoverFixture[:1], nil // not yet
		}
		return discoverFixture, nil
	})
	code, out, errs := runDiscover("--wait", "img.v2 lab")
	if code != 0 || calls.Load() != 3 {
		t.Fatalf("discover --wait = %d after %d browses, stderr %q; want 0 after 3", code, calls.Load(), errs)
	}
	if strings.Contains(out, "rootfs") || !strings.Contains(out, "img.v2 lab") {
		t.Errorf("discover --wait printed\n%s\nwant only the export waited for", out)
	}
}

func TestDiscoverWaitTimeout(t *testing.T) {
	fakeBrowse(t, func(int, discovery.BrowseConfig) ([]discovery.Found, error) { return discoverFixture, nil })
	began := time.Now()
	code, out, errs := runDiscover("--wait", "netboot", "--timeout", "500ms")
	if code != 1 || out != "" {
		t.Errorf("discover --wait netboot = %d, stdout %q; want 1 and nothing", code, out)
	}
	if want := `no export "netboot" appeared within 500ms`; !strings.Contains(errs, want) {
		t.Errorf("stderr = %q, want %q", errs, want)
	}
	if d := time.Since(began); d < 500*time.Millisecond || d > 2*time.Second {
		t.Errorf("gave up after %v, want about 500ms", d)
	}
}

func TestDiscoverErrors(t *testing.T) {
	fakeBrowse(t, func(int, discovery.BrowseConfig) ([]discovery.Found, error) {
		return nil, errors.New("discovery: no interface usb9")
	})
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--bogus"}, 2, "flag provided but not defined"},
		{[]string{"extra"}, 2, `unexpected argument "extra"`},
		{[]string{"--timeout", "-1s"}, 2, "want a positive duration"},
		{[]string{"--interface", "usb9"}, 1, "no interface usb9"},
		{[]string{"--wait", "x"}, 1, "no interface usb9"},
	} {
		code, _, errs := runDiscover(tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.want) {
			t.Errorf("discover %q = %d, stderr %q; want %d and %q", tc.args, code, errs, tc.code, tc.want)
		}
	}
}

func TestDiscoverNothingFound(t *testing.T) {
	fakeBrowse(t, func(int, discovery.BrowseConfig) ([]discovery.Found, error) { return nil, nil })
	code, out, errs := runDiscover()
	if code != 0 || out != "" || !strings.Contains(errs, "no NBD exports found") {
		t.Errorf("discover with nothing = %d, %q, %q", code, out, errs)
	}
}
