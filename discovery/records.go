package discovery

import (
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// Record TTLs, RFC 6762 §10: 120 s for records that hold a host name or
// address, 75 minutes for the others. Legacy unicast answers are capped
// at 10 s (§6.7).
const (
	ttlHost   = 120
	ttlOther  = 4500
	ttlLegacy = 10

	// cacheFlush is the top bit of the class of a unique record in a
	// response (RFC 6762 §10.2): receivers replace what they cached.
	cacheFlush = 1 << 15
	// unicastResponse is the top bit of a question's class: the querier
	// prefers a unicast answer (RFC 6762 §5.4).
	unicastResponse = 1 << 15
)

// service is one advertised export: its instance name and records' data.
type service struct {
	instance string // raw UTF-8 instance name
	fqdn     string // escaped <instance>._nbd._tcp.local.
	export   Export
	txt      []string // raw TXT strings
}

// equal reports whether a and b publish the same records.
func (a *service) equal(b *service) bool {
	if a.fqdn != b.fqdn || len(a.txt) != len(b.txt) {
		return false
	}
	for i := range a.txt {
		if a.txt[i] != b.txt[i] {
			return false
		}
	}
	return true
}

// zone is what one interface answers: every service, pointing at one host
// name, and that interface's own addresses. It is pure data; the same
// questions always give the same records.
type zone struct {
	host     string // escaped FQDN, "board.local."
	port     uint16
	services []*service
	addrs    []netip.Addr // of this interface only
}

// Records returns the answers to one question, as hashicorp/mdns's Zone
// does: nil when the question is not about a name of this zone.
func (z *zone) Records(q dns.Question) []dns.RR {
	class := q.Qclass &^ unicastResponse
	if class != dns.ClassINET && class != dns.ClassANY {
		return nil
	}
	want := func(t uint16) bool { return q.Qtype == t || q.Qtype == dns.TypeANY }
	var rrs []dns.RR
	switch {
	case len(z.services) == 0:
	case strings.EqualFold(q.Name, enumName):
		if want(dns.TypePTR) {
			rrs = append(rrs, enumPTR())
		}
	case strings.EqualFold(q.Name, serviceName):
		if want(dns.TypePTR) {
			for _, s := range z.services {
				rrs = append(rrs, s.ptr())
			}
		}
	case strings.EqualFold(q.Name, z.host):
		rrs = append(rrs, z.addrRecords(want(dns.TypeA), want(dns.TypeAAAA))...)
	default:
		for _, s := range z.services {
			if strings.EqualFold(q.Name, s.fqdn) {
				if want(dns.TypeSRV) {
					rrs = append(rrs, s.srv(z.host, z.port))
				}
				if want(dns.TypeTXT) {
					rrs = append(rrs, s.txtRR())
				}
			}
		}
	}
	return rrs
}

// additional returns the records RFC 6763 §12 suggests sending along with
// answers: SRV, TXT and addresses for a PTR to an instance; addresses for
// an SRV. Records already among the answers are left out.
func (z *zone) additional(answers []dns.RR) []dns.RR {
	var extra []dns.RR
	add := func(rr dns.RR) {
		for _, a := range answers {
			if dns.IsDuplicate(a, rr) {
				return
			}
		}
		for _, a := range extra {
			if dns.IsDuplicate(a, rr) {
				return
			}
		}
		extra = append(extra, rr)
	}
	for _, a := range answers {
		switch a := a.(type) {
		case *dns.PTR:
			for _, s := range z.services {
				if strings.EqualFold(a.Ptr, s.fqdn) {
					add(s.srv(z.host, z.port))
					add(s.txtRR())
					for _, rr := range z.addrRecords(true, true) {
						add(rr)
					}
				}
			}
		case *dns.SRV:
			for _, rr := range z.addrRecords(true, true) {
				add(rr)
			}
		}
	}
	return extra
}

// announcement returns the records of the given services, with the
// service type enumeration PTR and the host's addresses if asked: what
// RFC 6762 §8.3 announces, and with TTL 0 what §10.1 says goodbye with.
func (z *zone) announcement(svcs []*service, withEnum, withHost bool) []dns.RR {
	var rrs []dns.RR
	if withEnum && len(svcs) > 0 {
		rrs = append(rrs, enumPTR())
	}
	for _, s := range svcs {
		rrs = append(rrs, s.ptr(), s.srv(z.host, z.port), s.txtRR())
	}
	if withHost {
		rrs = append(rrs, z.addrRecords(true, true)...)
	}
	return rrs
}

// goodbye turns records into their goodbye form: the same records with
// TTL 0 (RFC 6762 §10.1).
func goodbye(rrs []dns.RR) []dns.RR {
	out := make([]dns.RR, len(rrs))
	for i, rr := range rrs {
		rr = dns.Copy(rr)
		rr.Header().Ttl = 0
		out[i] = rr
	}
	return out
}

// legacy turns records into a legacy unicast answer (RFC 6762 §6.7): TTL
// at most 10 s and no cache-flush bit, which old resolvers do not know.
func legacy(rrs []dns.RR) []dns.RR {
	out := make([]dns.RR, len(rrs))
	for i, rr := range rrs {
		rr = dns.Copy(rr)
		h := rr.Header()
		h.Class &^= cacheFlush
		h.Ttl = min(h.Ttl, ttlLegacy)
		out[i] = rr
	}
	return out
}

func (z *zone) addrRecords(v4, v6 bool) []dns.RR {
	var rrs []dns.RR
	for _, a := range z.addrs {
		switch {
		case a.Is4() && v4:
			rrs = append(rrs, &dns.A{Hdr: hdr(z.host, dns.TypeA, ttlHost, true), A: a.AsSlice()})
		case a.Is6() && v6:
			rrs = append(rrs, &dns.AAAA{Hdr: hdr(z.host, dns.TypeAAAA, ttlHost, true), AAAA: a.AsSlice()})
		}
	}
	return rrs
}

func enumPTR() dns.RR {
	return &dns.PTR{Hdr: hdr(enumName, dns.TypePTR, ttlOther, false), Ptr: serviceName}
}

func (s *service) ptr() dns.RR {
	return &dns.PTR{Hdr: hdr(serviceName, dns.TypePTR, ttlOther, false), Ptr: s.fqdn}
}

func (s *service) srv(host string, port uint16) dns.RR {
	return &dns.SRV{Hdr: hdr(s.fqdn, dns.TypeSRV, ttlHost, true), Port: port, Target: host}
}

func (s *service) txtRR() dns.RR {
	txt := make([]string, len(s.txt))
	for i, t := range s.txt {
		txt[i] = escapeTXT(t)
	}
	return &dns.TXT{Hdr: hdr(s.fqdn, dns.TypeTXT, ttlOther, true), Txt: txt}
}

// hdr is a record header; unique records (SRV, TXT, addresses) carry the
// cache-flush bit, shared ones (PTR) do not.
func hdr(name string, t uint16, ttl uint32, unique bool) dns.RR_Header {
	class := uint16(dns.ClassINET)
	if unique {
		class |= cacheFlush
	}
	return dns.RR_Header{Name: name, Rrtype: t, Class: class, Ttl: ttl}
}

// usableAddr reports whether an interface address may be advertised:
// never loopback, unspecified or multicast; IPv6 link-local is fine.
func usableAddr(a netip.Addr) bool {
	return a.IsValid() && !a.IsLoopback() && !a.IsUnspecified() && !a.IsMulticast() &&
		!a.Is4In6() && !(a.Is4() && a.As4()[0] == 127)
}
