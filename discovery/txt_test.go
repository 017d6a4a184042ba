package discovery

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestTXTRecord(t *testing.T) {
	for _, tc := range []struct {
		name  string
		e     Export
		board string
		want  []string
	}{
		{"minimal", Export{Name: "d"}, "", []string{"txtvers=1", "export=d", "ro=0", "tls=0"}},
		{"full", Export{Name: "rootfs", Description: "Debian 13", Size: 4096, ReadOnly: true, TLS: true, BlockSize: 4096}, "rpi4",
			[]string{"txtvers=1", "export=rootfs", "size=4096", "ro=1", "tls=1", "bs=4096", "desc=Debian 13", "board=rpi4"}},
		{"block size 1 is the default", Export{Name: "d", BlockSize: 1}, "", []string{"txtvers=1", "export=d", "ro=0", "tls=0"}},
		{"default export", Export{Name: ""}, "", []string{"txtvers=1", "export=", "ro=0", "tls=0"}},
		{"control characters dropped", Export{Name: "d", Description: "a\nb"}, "x\ty", []string{"txtvers=1", "export=d", "ro=0", "tls=0", "desc=ab", "board=xy"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := txtRecord(tc.e, tc.board)
			if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("txtRecord(%+v, %q) = %q, %v; want %q", tc.e, tc.board, got, err, tc.want)
			}
		})
	}
}

func TestTXTLimits(t *testing.T) {
	e := Export{
		Name:        strings.Repeat("n", 248), // "export=" + 248 = 255 bytes: fits exactly
		Description: strings.Repeat("ü", 300),
		Size:        1 << 62,
		BlockSize:   1 << 31,
	}
	txt, err := txtRecord(e, strings.Repeat("b", 1000))
	if err != nil {
		t.Fatalf("txtRecord(248-byte name) = %v, want it to fit", err)
	}
	total := 0
	for _, s := range txt {
		if len(s) > maxTXTString {
			t.Errorf("TXT string %.20q... is %d bytes, want <= 255", s, len(s))
		}
		total += 1 + len(s)
	}
	if total > 1300 {
		t.Errorf("TXT record is %d bytes, want <= 1300 (RFC 6763 §6.2)", total)
	}
	m := parseTXT(txt)
	if d := m[txtDesc]; !strings.HasPrefix(strings.Repeat("ü", 300), d) || len(d) < 240 {
		t.Errorf("desc cut to %d bytes, want the longest whole-character prefix that fits", len(d))
	}
	if m[txtExport] != e.Name {
		t.Errorf("export = %q, want the whole name", m[txtExport])
	}

	// The TXT record packs: one length byte per string, each <= 255.
	rr := &dns.TXT{Hdr: hdr("x.local.", dns.TypeTXT, 1, true)}
	for _, s := range txt {
		rr.Txt = append(rr.Txt, escapeTXT(s))
	}
	buf := make([]byte, 4096)
	if _, err := dns.PackRR(rr, buf, 0, nil, false); err != nil {
		t.Errorf("PackRR(TXT) = %v", err)
	}

	e.Name = strings.Repeat("n", 249)
	if _, err := txtRecord(e, ""); err == nil {
		t.Errorf("txtRecord(249-byte name) = nil error, want an error: a cut export name is a wrong one")
	}
	if _, err := buildServices([]Export{e, {Name: "ok"}}, DefaultInstance, "h", ""); err == nil || !strings.Contains(err.Error(), "nnnn") {
		t.Errorf("buildServices error = %v, want one naming the export", err)
	}
}

func TestTXTEscapeRoundTrip(t *testing.T) {
	for _, s := range []string{"desc=plain", `desc=C:\boot "x"`, "desc=é 日本", "board=\x00\xff"} {
		rr := &dns.TXT{Hdr: hdr("x.local.", dns.TypeTXT, 1, true), Txt: []string{escapeTXT(s)}}
		m := &dns.Msg{Answer: []dns.RR{rr}}
		buf, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(buf), s) {
			t.Errorf("packed TXT does not hold %q raw", s)
		}
		var back dns.Msg
		if err := back.Unpack(buf); err != nil {
			t.Fatal(err)
		}
		if got := unescapeTXT(back.Answer[0].(*dns.TXT).Txt[0]); got != s {
			t.Errorf("TXT round trip of %q = %q", s, got)
		}
	}
}

func TestParseTXT(t *testing.T) {
	got := parseTXT([]string{"txtvers=1", "Export=a=b", "export=second", "flag", "=novalue", ""})
	want := map[string]string{"txtvers": "1", "export": "a=b", "flag": ""}
	if !maps.Equal(got, want) {
		t.Errorf("parseTXT = %v, want %v", got, want)
	}
}
