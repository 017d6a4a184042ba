package config

import (
	"net/netip"
	"testing"
)

func TestExportPathFor(t *testing.T) {
	tests := []struct {
		path   string
		client string
		want   string
	}{
		{"/dev/sda", "10.0.0.7", "/dev/sda"},
		{"/srv/%s.img", "10.0.0.7", "/srv/10.0.0.7.img"},
		{"/srv/%s.img", "::ffff:10.0.0.7", "/srv/10.0.0.7.img"},
		{"/srv/%s.img", "fd00::7", "/srv/fd00::7.img"},
		{"/srv/%s.img", "fe80::7%eth0", "/srv/fe80::7.img"},
		{"/srv/%s/100%%.img", "10.0.0.7", "/srv/10.0.0.7/100%.img"},
		{"/srv/100%%", "10.0.0.7", "/srv/100%"},
	}
	for _, tt := range tests {
		e := Export{Path: tt.path, Overlay: tt.path}
		addr := netip.MustParseAddr(tt.client)
		if got := e.PathFor(addr); got != tt.want {
			t.Errorf("Export{Path: %q}.PathFor(%v) = %q, want %q", tt.path, addr, got, tt.want)
		}
		if got := e.OverlayFor(addr); got != tt.want {
			t.Errorf("Export{Overlay: %q}.OverlayFor(%v) = %q, want %q", tt.path, addr, got, tt.want)
		}
	}
}

func TestExportAllows(t *testing.T) {
	lan := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	tests := []struct {
		allow  []netip.Prefix
		client string
		want   bool
	}{
		{nil, "192.0.2.1", true},
		{lan, "10.1.2.3", true},
		{lan, "::ffff:10.1.2.3", true},
		{lan, "192.0.2.1", false},
		{lan, "fd00::1", true},
		{lan, "fd00::1%eth0", true},
		{lan, "2001:db8::1", false},
	}
	for _, tt := range tests {
		e := Export{Allow: tt.allow}
		addr := netip.MustParseAddr(tt.client)
		if got := e.Allows(addr); got != tt.want {
			t.Errorf("Export{Allow: %v}.Allows(%v) = %v, want %v", tt.allow, addr, got, tt.want)
		}
	}
}

func TestExportEqual(t *testing.T) {
	base := func() Export {
		e := DefaultExport()
		e.Name, e.Path, e.Line = "a", "/a", 3
		e.Allow = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
		return e
	}
	tests := []struct {
		name   string
		change func(e *Export)
		want   bool
	}{
		{"same", func(e *Export) {}, true},
		{"moved in the file", func(e *Export) { e.Line = 30 }, true},
		{"path", func(e *Export) { e.Path = "/b" }, false},
		{"readonly", func(e *Export) { e.ReadOnly = true }, false},
		{"allow", func(e *Export) { e.Allow[0] = netip.MustParsePrefix("10.0.0.0/16") }, false},
		{"allow longer", func(e *Export) { e.Allow = append(e.Allow, e.Allow[0]) }, false},
	}
	for _, tt := range tests {
		a, b := base(), base()
		tt.change(&b)
		if got := a.Equal(&b); got != tt.want {
			t.Errorf("%s: Equal = %v, want %v", tt.name, got, tt.want)
		}
	}
	empty, none := base(), base()
	empty.Allow, none.Allow = []netip.Prefix{}, nil
	if !empty.Equal(&none) {
		t.Errorf("Equal(allow: [], no allow) = false, want true")
	}
}
