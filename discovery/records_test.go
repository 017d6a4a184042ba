package discovery

import (
	"bytes"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// testZone is a zone of two exports on host "board" with one IPv4 and one
// link-local IPv6 address.
func testZone(t testing.TB) *zone {
	t.Helper()
	svcs, err := buildServices([]Export{
		{Name: "rootfs", Description: "Debian 13", Size: 8 << 30, ReadOnly: true, BlockSize: 512},
		{Name: "img.v2 lab", Size: 1 << 20, TLS: true},
	}, DefaultInstance, "board", "rpi4 #3")
	if err != nil {
		t.Fatal(err)
	}
	return &zone{host: "board.local.", port: 10809, services: svcs, addrs: []netip.Addr{
		netip.MustParseAddr("10.231.0.1"), netip.MustParseAddr("fe80::1"),
	}}
}

func TestEscapeLabelRoundTrip(t *testing.T) {
	for _, name := range []string{
		"rootfs on board",
		"img.v2 lab on board",
		"a.b c",
		`back\slash`,
		`quote" semi; at@ (paren) 'tick'`,
		"Disk é ünïcode 日本",
		"trailing dot.",
		"\x7f\x01 raw",
	} {
		t.Run(name, func(t *testing.T) {
			fqdn := instanceFQDN(name)
			m := &dns.Msg{Answer: []dns.RR{&dns.PTR{Hdr: hdr(serviceName, dns.TypePTR, 1, false), Ptr: fqdn}}}
			buf, err := m.Pack()
			if err != nil {
				t.Fatalf("Pack(%q) = %v", fqdn, err)
			}
			var back dns.Msg
			if err := back.Unpack(buf); err != nil {
				t.Fatalf("Unpack = %v", err)
			}
			got := back.Answer[0].(*dns.PTR).Ptr
			if got != fqdn {
				t.Errorf("unpacked name = %q, want %q (our escaping must match miekg/dns)", got, fqdn)
			}
			label, rest, ok := firstLabel(got)
			if !ok || label != name || rest != serviceName {
				t.Errorf("firstLabel(%q) = %q, %q, %v; want %q, %q, true", got, label, rest, ok, name, serviceName)
			}
		})
	}
}

// TestInstanceWire checks the bytes of a name with a dot and a space: one
// label of 5 bytes holding them raw, then _nbd, _tcp, local.
func TestInstanceWire(t *testing.T) {
	rr := &dns.PTR{Hdr: hdr(serviceName, dns.TypePTR, 1, false), Ptr: instanceFQDN("a.b c")}
	buf := make([]byte, 512)
	n, err := dns.PackRR(rr, buf, 0, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte("\x05a.b c\x04_nbd\x04_tcp\x05local\x00")
	if !bytes.HasSuffix(buf[:n], want) {
		t.Errorf("PTR rdata = %q, want suffix %q", buf[:n], want)
	}
}

func TestRenderInstance(t *testing.T) {
	long := strings.Repeat("é", 40) // 80 bytes
	for _, tc := range []struct{ tmpl, export, host, want string }{
		{DefaultInstance, "rootfs", "board", "rootfs on board"},
		{"%h: %e", "a.b", "pi", "pi: a.b"},
		{"100%% %e %x", "d", "h", "100% d %x"},
		{"%e", "tab\there", "h", "tabhere"},
		{"%e", "bad\xffutf8", "h", "bad\uFFFDutf8"},
		{"", "disk", "h", "disk"},
		{DefaultInstance, "", "h", "(default) on h"},
		{"%e", long, "h", strings.Repeat("é", 31)}, // 62 bytes: é is never split
	} {
		if got := renderInstance(tc.tmpl, tc.export, tc.host); got != tc.want {
			t.Errorf("renderInstance(%q, %q, %q) = %q, want %q", tc.tmpl, tc.export, tc.host, got, tc.want)
		}
	}
}

func TestUniqueInstance(t *testing.T) {
	svcs, err := buildServices([]Export{{Name: "a"}, {Name: "b"}, {Name: "A"}}, "disk", "h", "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range svcs {
		got = append(got, s.instance)
	}
	if want := []string{"disk", "disk #2", "disk #3"}; !slices.Equal(got, want) {
		t.Errorf("instances = %q, want %q", got, want)
	}
	long := strings.Repeat("x", 63)
	if got := uniqueInstance(long, map[string]bool{long: true}); got != strings.Repeat("x", 60)+" #2" || len(got) != 63 {
		t.Errorf("uniqueInstance(63 x) = %q, want 60 x and \" #2\"", got)
	}
}

func TestHostLabel(t *testing.T) {
	for in, want := range map[string]string{
		"board":             "board",
		"board.lab.example": "board",
		"my_board":          "my-board",
		"":                  "boardnbd",
		"-x-":               "x",
	} {
		if got := hostLabel(in); got != want {
			t.Errorf("hostLabel(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestZoneRecords(t *testing.T) {
	z := testZone(t)
	q := func(name string, qtype uint16) dns.Question {
		return dns.Question{Name: name, Qtype: qtype, Qclass: dns.ClassINET}
	}
	for _, tc := range []struct {
		name string
		q    dns.Question
		want []string // record strings, TTL and class as sent
	}{
		{"browse", q("_nbd._tcp.local.", dns.TypePTR), []string{
			"_nbd._tcp.local.\t4500\tIN\tPTR\trootfs\\ on\\ board._nbd._tcp.local.",
			"_nbd._tcp.local.\t4500\tIN\tPTR\timg\\.v2\\ lab\\ on\\ board._nbd._tcp.local.",
		}},
		{"browse case and QU bit", dns.Question{Name: "_NBD._tcp.LOCAL.", Qtype: dns.TypePTR, Qclass: dns.ClassINET | unicastResponse}, []string{
			"_nbd._tcp.local.\t4500\tIN\tPTR\trootfs\\ on\\ board._nbd._tcp.local.",
			"_nbd._tcp.local.\t4500\tIN\tPTR\timg\\.v2\\ lab\\ on\\ board._nbd._tcp.local.",
		}},
		{"enumeration", q("_services._dns-sd._udp.local.", dns.TypePTR), []string{
			"_services._dns-sd._udp.local.\t4500\tIN\tPTR\t_nbd._tcp.local.",
		}},
		{"SRV", q("img\\.v2\\ lab\\ on\\ board._nbd._tcp.local.", dns.TypeSRV), []string{
			"img\\.v2\\ lab\\ on\\ board._nbd._tcp.local.\t120\tCLASS32769\tSRV\t0 0 10809 board.local.",
		}},
		{"ANY instance", q("rootfs\\ on\\ board._nbd._tcp.local.", dns.TypeANY), []string{
			"rootfs\\ on\\ board._nbd._tcp.local.\t120\tCLASS32769\tSRV\t0 0 10809 board.local.",
			"rootfs\\ on\\ board._nbd._tcp.local.\t4500\tCLASS32769\tTXT\t\"txtvers=1\" \"export=rootfs\" \"size=8589934592\" \"ro=1\" \"tls=0\" \"bs=512\" \"desc=Debian 13\" \"board=rpi4 #3\"",
		}},
		{"A", q("Board.local.", dns.TypeA), []string{"board.local.\t120\tCLASS32769\tA\t10.231.0.1"}},
		{"AAAA", q("board.local.", dns.TypeAAAA), []string{"board.local.\t120\tCLASS32769\tAAAA\tfe80::1"}},
		{"other host", q("other.local.", dns.TypeA), nil},
		{"other service", q("_http._tcp.local.", dns.TypePTR), nil},
		{"wrong type", q("_nbd._tcp.local.", dns.TypeTXT), nil},
		{"chaos class", dns.Question{Name: "board.local.", Qtype: dns.TypeA, Qclass: dns.ClassCHAOS}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, rr := range z.Records(tc.q) {
				got = append(got, rr.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("Records(%v) =\n%s\nwant\n%s", tc.q, strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
	empty := &zone{host: "board.local.", port: 10809, addrs: z.addrs}
	if rrs := empty.Records(dns.Question{Name: "board.local.", Qtype: dns.TypeA, Qclass: dns.ClassINET}); rrs != nil {
		t.Errorf("Records without services = %v, want nil: nothing to advertise, no host to claim", rrs)
	}
}

// TestZoneOwnAddresses checks that a zone never holds another interface's
// addresses: each interface's zone is built from that interface alone.
func TestZoneOwnAddresses(t *testing.T) {
	z := testZone(t)
	z.addrs = []netip.Addr{netip.MustParseAddr("192.168.7.2")}
	rrs := z.Records(dns.Question{Name: "board.local.", Qtype: dns.TypeANY, Qclass: dns.ClassINET})
	if len(rrs) != 1 || rrs[0].(*dns.A).A.String() != "192.168.7.2" {
		t.Errorf("Records(ANY board.local.) = %v, want only A 192.168.7.2", rrs)
	}
}

func TestUsableAddr(t *testing.T) {
	for s, want := range map[string]bool{
		"10.231.0.1": true, "169.254.3.4": true, "fe80::1": true, "2001:db8::1": true,
		"127.0.0.1": false, "127.1.2.3": false, "::1": false, "0.0.0.0": false, "::": false,
		"224.0.0.251": false, "::ffff:10.0.0.1": false,
	} {
		if got := usableAddr(netip.MustParseAddr(s)); got != want {
			t.Errorf("usableAddr(%s) = %v, want %v", s, got, want)
		}
	}
}

func TestAdditional(t *testing.T) {
	z := testZone(t)
	answers := z.Records(dns.Question{Name: serviceName, Qtype: dns.TypePTR, Qclass: dns.ClassINET})
	extra := z.additional(answers)
	var types []string
	for _, rr := range extra {
		types = append(types, dns.TypeToString[rr.Header().Rrtype])
	}
	// SRV and TXT of each instance, and the two addresses once.
	if want := []string{"SRV", "TXT", "A", "AAAA", "SRV", "TXT"}; !slices.Equal(types, want) {
		t.Errorf("additional(PTRs) types = %v, want %v", types, want)
	}
}

func TestGoodbyeTTL0(t *testing.T) {
	z := testZone(t)
	rrs := z.announcement(z.services, true, true)
	bye := goodbye(rrs)
	msgs := packResponses(&dns.Msg{}, bye, nil)
	if len(msgs) != 1 {
		t.Fatalf("goodbye packets = %d, want 1", len(msgs))
	}
	var m dns.Msg
	if err := m.Unpack(msgs[0]); err != nil {
		t.Fatal(err)
	}
	if len(m.Answer) != len(rrs) || len(m.Answer) != 1+3*2+2 {
		t.Errorf("goodbye holds %d records, want %d (enumeration PTR, PTR+SRV+TXT per export, A+AAAA)", len(m.Answer), len(rrs))
	}
	for _, rr := range m.Answer {
		if rr.Header().Ttl != 0 {
			t.Errorf("goodbye record %v has TTL %d, want 0", rr, rr.Header().Ttl)
		}
	}
	for _, rr := range rrs {
		if rr.Header().Ttl == 0 {
			t.Errorf("goodbye changed the announcement's record %v", rr)
		}
	}
	if !m.Response || !m.Authoritative || m.Id != 0 || len(m.Question) != 0 {
		t.Errorf("goodbye header = %+v, want an authoritative response with ID 0 and no question", m.MsgHdr)
	}
}

func TestLegacy(t *testing.T) {
	z := testZone(t)
	for _, rr := range legacy(z.announcement(z.services, true, true)) {
		h := rr.Header()
		if h.Ttl > ttlLegacy || h.Class != dns.ClassINET {
			t.Errorf("legacy record %v: TTL %d class %d, want TTL <= 10 and class IN without cache-flush", rr, h.Ttl, h.Class)
		}
	}
}

func TestSuppressKnown(t *testing.T) {
	z := testZone(t)
	answers := z.Records(dns.Question{Name: serviceName, Qtype: dns.TypePTR, Qclass: dns.ClassINET})
	fresh := dns.Copy(answers[0])
	stale := dns.Copy(answers[1])
	stale.Header().Ttl = ttlOther/2 - 1
	got := suppressKnown(slices.Clone(answers), []dns.RR{fresh, stale})
	if len(got) != 1 || !dns.IsDuplicate(got[0], answers[1]) {
		t.Errorf("suppressKnown = %v, want only the answer known with less than half its TTL", got)
	}
}

func TestPackResponsesSplits(t *testing.T) {
	var exports []Export
	for i := range 60 {
		exports = append(exports, Export{Name: strings.Repeat("x", 40) + string(rune('A'+i%26)) + strings.Repeat("y", i), Description: strings.Repeat("d", 200)})
	}
	svcs, err := buildServices(exports, DefaultInstance, "board", "")
	if err != nil {
		t.Fatal(err)
	}
	z := &zone{host: "board.local.", port: 10809, services: svcs, addrs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}
	rrs := z.announcement(svcs, true, true)
	msgs := packResponses(&dns.Msg{}, rrs, nil)
	if len(msgs) < 2 {
		t.Fatalf("packResponses of %d records gave %d message, want several", len(rrs), len(msgs))
	}
	n := 0
	for i, b := range msgs {
		if len(b) > sendLimit {
			t.Errorf("message %d is %d bytes, want <= %d", i, len(b), sendLimit)
		}
		var m dns.Msg
		if err := m.Unpack(b); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		n += len(m.Answer)
	}
	if n != len(rrs) {
		t.Errorf("messages hold %d records, want %d", n, len(rrs))
	}
}
