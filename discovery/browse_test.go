package discovery

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

// respond packs and unpacks a response of z to q, as it would travel.
func respond(t testing.TB, z *zone, q dns.Question) *dns.Msg {
	t.Helper()
	answers := z.Records(q)
	msgs := packResponses(&dns.Msg{}, answers, z.additional(answers))
	var m dns.Msg
	if err := m.Unpack(msgs[0]); err != nil {
		t.Fatal(err)
	}
	return &m
}

func TestBrowserResults(t *testing.T) {
	z := testZone(t)
	b := newBrowser([]ifaceAddrs{{ifi: net.Interface{Index: 7, Name: "eth0"}}})
	b.add(packet{msg: respond(t, z, dns.Question{Name: serviceName, Qtype: dns.TypePTR, Qclass: dns.ClassINET}), ifindex: 7})
	if qs := b.followUps(); len(qs) != 0 {
		t.Errorf("followUps after a full answer = %v, want none", qs)
	}
	got := b.results()
	if len(got) != 2 {
		t.Fatalf("results = %+v, want 2", got)
	}
	f := got[0]
	want := Found{
		Instance: "img.v2 lab on board", Export: "img.v2 lab", Host: "board.local",
		Addrs: []netip.Addr{netip.MustParseAddr("10.231.0.1"), netip.MustParseAddr("fe80::1%eth0")},
		Port:  10809, Size: 1 << 20, TLS: true, Board: "rpi4 #3",
	}
	if f.Instance != want.Instance || f.Export != want.Export || f.Host != want.Host || !slices.Equal(f.Addrs, want.Addrs) ||
		f.Port != want.Port || f.Size != want.Size || f.TLS != want.TLS || f.ReadOnly || f.Board != want.Board {
		t.Errorf("results[0] = %+v\nwant %+v", f, want)
	}
	r := got[1]
	if r.Export != "rootfs" || !r.ReadOnly || r.BlockSize != 512 || r.Description != "Debian 13" || r.Size != 8<<30 || r.TXT["txtvers"] != "1" {
		t.Errorf("results[1] = %+v, want rootfs, ro, bs 512, desc Debian 13", r)
	}

	// A goodbye for one instance removes it.
	bye := goodbye(z.announcement(z.services[:1], false, false))
	b.add(packet{msg: &dns.Msg{MsgHdr: dns.MsgHdr{Response: true}, Answer: bye}, ifindex: 7})
	if got := b.results(); len(got) != 1 || got[0].Export != "img.v2 lab" {
		t.Errorf("results after goodbye = %+v, want only img.v2 lab", got)
	}
}

func TestBrowserFollowUps(t *testing.T) {
	z := testZone(t)
	b := newBrowser(nil)
	// Only the PTRs, as a responder that sends no additional records.
	ptrs := z.Records(dns.Question{Name: serviceName, Qtype: dns.TypePTR, Qclass: dns.ClassINET})
	b.add(packet{msg: &dns.Msg{MsgHdr: dns.MsgHdr{Response: true}, Answer: ptrs}})
	for round := range followUpTries + 1 {
		qs := b.followUps()
		want := 2
		if round == followUpTries {
			want = 0 // bounded
		}
		if len(qs) != want {
			t.Fatalf("round %d: followUps = %d queries, want %d", round, len(qs), want)
		}
		for _, q := range qs {
			if len(q) != 2 || q[0].Qtype != dns.TypeSRV || q[1].Qtype != dns.TypeTXT {
				t.Errorf("follow-up = %v, want SRV and TXT", q)
			}
		}
	}
	if got := b.results(); len(got) != 0 {
		t.Errorf("results without SRV = %+v, want none", got)
	}
}

func TestFoundURI(t *testing.T) {
	for _, tc := range []struct {
		f    Found
		want string
	}{
		{Found{Export: "rootfs", Port: 10809, Addrs: []netip.Addr{netip.MustParseAddr("10.0.0.2")}}, "nbd://10.0.0.2:10809/rootfs"},
		{Found{Export: "img.v2 lab/x", Port: 10809, Addrs: []netip.Addr{netip.MustParseAddr("2001:db8::2")}}, "nbd://[2001:db8::2]:10809/img.v2%20lab%2Fx"},
		{Found{Export: "d", Port: 10809, Addrs: []netip.Addr{netip.MustParseAddr("fe80::2%eth0")}}, "nbd://[fe80::2%25eth0]:10809/d"},
		{Found{Export: "d", Port: 1234, Host: "board.local", TLS: true}, "nbds://board.local:1234/d"},
		{Found{Export: "", Port: 10809, Host: "board.local"}, "nbd://board.local:10809/"},
	} {
		if got := tc.f.URI(); got != tc.want {
			t.Errorf("URI(%+v) = %q, want %q", tc.f, got, tc.want)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	cfg, err := Config{Host: "pi.local"}.withDefaults()
	if err != nil || cfg.Backend != BackendAuto || cfg.Port != DefaultPort || cfg.Host != "pi" || cfg.Instance != DefaultInstance || cfg.Logger == nil {
		t.Errorf("withDefaults() = %+v, %v", cfg, err)
	}
	for _, bad := range []Config{{Backend: "mdns"}, {Port: 70000}, {Host: "a b"}, {Host: "a.b"}} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("withDefaults(%+v) = nil error, want one", bad)
		}
	}
}

// FuzzBrowserAdd feeds arbitrary packets to the browser: it must never
// panic, whatever a neighbour sends.
func FuzzBrowserAdd(f *testing.F) {
	z := testZone(f)
	for _, q := range []dns.Question{
		{Name: serviceName, Qtype: dns.TypePTR, Qclass: dns.ClassINET},
		{Name: "board.local.", Qtype: dns.TypeANY, Qclass: dns.ClassINET},
	} {
		answers := z.Records(q)
		for _, m := range packResponses(&dns.Msg{}, answers, z.additional(answers)) {
			f.Add(m)
		}
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		var m dns.Msg
		if m.Unpack(pkt) != nil {
			return
		}
		b := newBrowser([]ifaceAddrs{{ifi: net.Interface{Index: 1, Name: "eth0"}}})
		b.add(packet{msg: &m, ifindex: 1})
		b.followUps()
		for _, f := range b.results() {
			f.URI()
		}
	})
}

// FuzzEscapeLabel checks that any instance name survives escaping and
// unescaping.
func FuzzEscapeLabel(f *testing.F) {
	for _, s := range []string{"a.b c", `x\y`, "é", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		label, rest, ok := firstLabel(escapeLabel(s) + ".local.")
		if !ok || label != s || rest != "local." {
			t.Errorf("firstLabel(escapeLabel(%q)) = %q, %q, %v", s, label, rest, ok)
		}
		if got := unescapeTXT(escapeTXT(s)); got != s {
			t.Errorf("unescapeTXT(escapeTXT(%q)) = %q", s, got)
		}
	})
}
