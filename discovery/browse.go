package discovery

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Found is one export a browse found.
type Found struct {
	Instance    string            `json:"instance"` // DNS-SD instance name, UTF-8
	Export      string            `json:"export"`   // TXT export, else the instance name
	Host        string            `json:"host"`     // SRV target without the trailing dot, "board.local"
	Addrs       []netip.Addr      `json:"addrs"`    // IPv4 first; link-local IPv6 carries the interface as zone
	Port        int               `json:"port"`
	Size        int64             `json:"size"` // bytes, 0 when not advertised
	ReadOnly    bool              `json:"readonly"`
	TLS         bool              `json:"tls"`
	BlockSize   uint32            `json:"blocksize"` // 0 when not advertised
	Description string            `json:"description"`
	Board       string            `json:"board"`
	TXT         map[string]string `json:"txt"` // every TXT key, lower case
}

// URI is the NBD URI of the export: nbd://host:port/export, or nbds://
// when the export requires TLS (the NBD URI specification). The host is
// the first address (IPv6 in brackets, a zone as %25zone, RFC 6874), or
// the host name when no address is known. The export name is
// percent-escaped.
func (f Found) URI() string {
	scheme := "nbd"
	if f.TLS {
		scheme = "nbds"
	}
	host := f.Host
	if len(f.Addrs) > 0 {
		a := f.Addrs[0]
		switch {
		case a.Is4():
			host = a.String()
		case a.Zone() != "":
			host = "[" + a.WithZone("").String() + "%25" + url.PathEscape(a.Zone()) + "]"
		default:
			host = "[" + a.String() + "]"
		}
	}
	return fmt.Sprintf("%s://%s:%d/%s", scheme, host, f.Port, url.PathEscape(f.Export))
}

// BrowseConfig configures Browse.
type BrowseConfig struct {
	Interfaces []string      // empty = every up, multicast-capable, non-loopback interface
	Timeout    time.Duration // how long to listen; 0 = DefaultBrowseTimeout
}

// DefaultBrowseTimeout is how long Browse listens when neither the
// context nor BrowseConfig.Timeout says otherwise.
const DefaultBrowseTimeout = 3 * time.Second

// Browse timing: PTR queries are repeated at these offsets, follow-up
// queries for missing SRV, TXT and addresses every followUpGap, at most
// followUpTries times each.
var queryAt = []time.Duration{0, time.Second, 3 * time.Second}

const (
	followUpGap   = 250 * time.Millisecond
	followUpTries = 3
)

// Browse asks every chosen interface for _nbd._tcp instances, resolves
// them, and returns what it found when ctx ends or the timeout passes,
// sorted by export and host. The end of ctx is not an error.
//
// Queries go out from an ephemeral port, so responders answer by unicast
// (RFC 6762 §6.7) and Browse needs no share of UDP 5353: it works beside
// avahi-daemon and beside this package's own responder.
func Browse(ctx context.Context, cfg BrowseConfig) ([]Found, error) {
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultBrowseTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	ifs, missing, err := listInterfaces(cfg.Interfaces)
	if err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("discovery: no interface %s", strings.Join(missing, ", "))
	}
	if len(ifs) == 0 {
		return nil, ErrNoInterface
	}
	var conns []*mconn
	var errs []error
	for _, v6 := range []bool{false, true} {
		c, err := listenMDNS(v6, 0)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		conns = append(conns, c)
	}
	if len(conns) == 0 {
		return nil, fmt.Errorf("discovery: %w", errors.Join(errs...))
	}

	in := make(chan packet, 64)
	done := make(chan struct{})
	readers := make(chan struct{}, len(conns))
	for _, c := range conns {
		go func() {
			defer func() { readers <- struct{}{} }()
			buf := make([]byte, maxPacket)
			for {
				n, ifindex, _, err := c.readFrom(buf)
				if err != nil {
					if errors.Is(err, net.ErrClosed) {
						return
					}
					select {
					case <-done:
						return
					case <-time.After(followUpGap): // a persistent error must not spin
					}
					continue
				}
				var m dns.Msg
				if m.Unpack(buf[:n]) != nil || !m.Response {
					continue
				}
				select {
				case in <- packet{msg: &m, ifindex: ifindex}:
				case <-done:
					return
				}
			}
		}()
	}
	defer func() {
		close(done)
		for _, c := range conns {
			c.close()
		}
		for range conns {
			<-readers
		}
	}()

	b := newBrowser(ifs)
	send := func(qs ...dns.Question) {
		m := &dns.Msg{MsgHdr: dns.MsgHdr{Id: dns.Id()}, Question: qs}
		buf, err := m.Pack()
		if err != nil {
			return
		}
		for _, ia := range ifs {
			for _, c := range conns {
				if (c.v6 && !ia.has6()) || (!c.v6 && !ia.has4()) {
					continue
				}
				dst := *c.group()
				if c.v6 {
					dst.Zone = ia.ifi.Name
				}
				c.writeTo(buf, ia.ifi.Index, &dst) // a link that fails is one we cannot browse
			}
		}
	}

	start := time.Now()
	tick := time.NewTicker(followUpGap)
	defer tick.Stop()
	nextQuery := 0
	for {
		if nextQuery < len(queryAt) && time.Since(start) >= queryAt[nextQuery] {
			send(dns.Question{Name: serviceName, Qtype: dns.TypePTR, Qclass: dns.ClassINET})
			nextQuery++
		}
		select {
		case <-ctx.Done():
			return b.results(), nil
		case p := <-in:
			b.add(p)
		case <-tick.C:
			for _, q := range b.followUps() {
				send(q...)
			}
		}
	}
}

// packet is one response and the interface it came in on.
type packet struct {
	msg     *dns.Msg
	ifindex int
}

// browser collects the records of responses; it is pure, so tests feed it
// packets directly.
type browser struct {
	ifname map[int]string

	instances map[string]string              // lower-case FQDN → FQDN, from PTRs
	srv       map[string]*dns.SRV            // by lower-case owner
	txt       map[string][]string            // by lower-case owner, unescaped
	addrs     map[string]map[netip.Addr]bool // by lower-case host
	asked     map[string]int                 // follow-up queries sent, by lower-case name
}

func newBrowser(ifs []ifaceAddrs) *browser {
	b := &browser{
		ifname:    make(map[int]string),
		instances: make(map[string]string),
		srv:       make(map[string]*dns.SRV),
		txt:       make(map[string][]string),
		addrs:     make(map[string]map[netip.Addr]bool),
		asked:     make(map[string]int),
	}
	for _, ia := range ifs {
		b.ifname[ia.ifi.Index] = ia.ifi.Name
	}
	return b
}

// add takes the records of one response; a record with TTL 0 (a goodbye)
// removes what it names.
func (b *browser) add(p packet) {
	rrs := append(append(append([]dns.RR(nil), p.msg.Answer...), p.msg.Ns...), p.msg.Extra...)
	for _, rr := range rrs {
		h := rr.Header()
		name := strings.ToLower(h.Name)
		bye := h.Ttl == 0
		switch rr := rr.(type) {
		case *dns.PTR:
			if name != serviceName {
				continue
			}
			key := strings.ToLower(rr.Ptr)
			if bye {
				delete(b.instances, key)
			} else {
				b.instances[key] = rr.Ptr
			}
		case *dns.SRV:
			if bye {
				delete(b.srv, name)
			} else {
				b.srv[name] = rr
			}
		case *dns.TXT:
			if bye {
				delete(b.txt, name)
				continue
			}
			txt := make([]string, len(rr.Txt))
			for i, t := range rr.Txt {
				txt[i] = unescapeTXT(t)
			}
			b.txt[name] = txt
		case *dns.A:
			b.addr(name, rr.A, "", bye)
		case *dns.AAAA:
			b.addr(name, rr.AAAA, b.ifname[p.ifindex], bye)
		}
	}
}

func (b *browser) addr(host string, ip net.IP, ifname string, bye bool) {
	a, ok := netipAddr(ip)
	if !ok {
		return
	}
	if a.Is6() && (a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast()) && ifname != "" {
		a = a.WithZone(ifname)
	}
	if bye {
		delete(b.addrs[host], a)
		return
	}
	if b.addrs[host] == nil {
		b.addrs[host] = make(map[netip.Addr]bool)
	}
	b.addrs[host][a] = true
}

// followUps returns the queries for what is still missing: SRV and TXT of
// instances, addresses of hosts. Each name is asked at most
// followUpTries times.
func (b *browser) followUps() [][]dns.Question {
	var qs [][]dns.Question
	ask := func(name string, types ...uint16) {
		key := strings.ToLower(name)
		if b.asked[key] >= followUpTries {
			return
		}
		b.asked[key]++
		var q []dns.Question
		for _, t := range types {
			q = append(q, dns.Question{Name: name, Qtype: t, Qclass: dns.ClassINET})
		}
		qs = append(qs, q)
	}
	for key, inst := range b.instances {
		srv, hasSRV := b.srv[key]
		_, hasTXT := b.txt[key]
		if !hasSRV || !hasTXT {
			ask(inst, dns.TypeSRV, dns.TypeTXT)
			continue
		}
		if len(b.addrs[strings.ToLower(srv.Target)]) == 0 {
			ask(srv.Target, dns.TypeA, dns.TypeAAAA)
		}
	}
	return qs
}

// results turns what was collected into Found values: every instance with
// an SRV record.
func (b *browser) results() []Found {
	var out []Found
	for key, inst := range b.instances {
		srv, ok := b.srv[key]
		if !ok {
			continue
		}
		label, _, ok := firstLabel(inst)
		if !ok {
			continue
		}
		f := Found{
			Instance: label,
			Export:   label,
			Host:     strings.TrimSuffix(srv.Target, "."),
			Port:     int(srv.Port),
			TXT:      parseTXT(b.txt[key]),
		}
		if host, _, ok := unescape(f.Host, false); ok {
			f.Host = host
		}
		for a := range b.addrs[strings.ToLower(srv.Target)] {
			f.Addrs = append(f.Addrs, a)
		}
		slices.SortFunc(f.Addrs, compareAddr)
		if v, ok := f.TXT[txtExport]; ok {
			f.Export = v
		}
		f.Size, _ = strconv.ParseInt(f.TXT[txtSize], 10, 64)
		f.ReadOnly = f.TXT[txtRO] == "1"
		f.TLS = f.TXT[txtTLS] == "1"
		if bs, err := strconv.ParseUint(f.TXT[txtBS], 10, 32); err == nil {
			f.BlockSize = uint32(bs)
		}
		f.Description = f.TXT[txtDesc]
		f.Board = f.TXT[txtBoard]
		out = append(out, f)
	}
	slices.SortFunc(out, func(x, y Found) int {
		return cmp.Or(cmp.Compare(x.Export, y.Export), cmp.Compare(x.Host, y.Host), cmp.Compare(x.Instance, y.Instance))
	})
	return out
}

// compareAddr orders IPv4 first, then global IPv6, then link-local.
func compareAddr(x, y netip.Addr) int {
	rank := func(a netip.Addr) int {
		switch {
		case a.Is4():
			return 0
		case a.IsLinkLocalUnicast():
			return 2
		}
		return 1
	}
	return cmp.Or(cmp.Compare(rank(x), rank(y)), x.Compare(y))
}
