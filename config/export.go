package config

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"unicode/utf8"
)

// Allows reports whether a client at addr may use the export: the allow
// list is empty or one of its prefixes contains addr. An IPv4 client seen
// through an IPv6 socket (::ffff:10.0.0.7) counts as its IPv4 address, and
// a zone is ignored.
func (e *Export) Allows(addr netip.Addr) bool {
	if len(e.Allow) == 0 {
		return true
	}
	addr = addr.Unmap().WithZone("")
	for _, p := range e.Allow {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// PerClient reports whether Path has a %s, so that each client address
// gets its own file.
func (e *Export) PerClient() bool {
	return perClient(e.Path)
}

// PathFor returns the file to serve to the client at addr: Path with %s
// replaced by the client's address (IPv4 unmapped, without zone, as
// netip.Addr.String writes it: "10.0.0.7", "fd00::7") and %% by %. For an
// export that is not PerClient, addr is not used.
func (e *Export) PathFor(addr netip.Addr) string {
	return expand(e.Path, addr)
}

// OverlayFor returns the overlay file of the client at addr, as PathFor
// does for the image.
func (e *Export) OverlayFor(addr netip.Addr) string {
	return expand(e.Overlay, addr)
}

// Equal reports whether e and o serve the same thing the same way: every
// field but Line is equal. A reload uses it to keep unchanged exports and
// their clients.
func (e *Export) Equal(o *Export) bool {
	a, b := *e, *o
	a.Line, b.Line = 0, 0
	a.Allow, b.Allow = nil, nil
	return reflect.DeepEqual(a, b) && slices.Equal(e.Allow, o.Allow)
}

func perClient(p string) bool {
	n, _ := scanPattern(p)
	return n > 0
}

// scanPattern counts the %s in p and returns the first % sequence that is
// neither %s nor %%, or "".
func scanPattern(p string) (n int, bad string) {
	for i := 0; i < len(p); i++ {
		if p[i] != '%' {
			continue
		}
		if i+1 == len(p) {
			return n, "%"
		}
		switch p[i+1] {
		case 's':
			n++
		case '%':
		default:
			r, _ := utf8.DecodeRuneInString(p[i+1:])
			if bad == "" {
				bad = "%" + string(r)
			}
		}
		i++
	}
	return n, bad
}

func expand(p string, addr netip.Addr) string {
	if !strings.Contains(p, "%") {
		return p
	}
	client := addr.Unmap().WithZone("").String()
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+1 < len(p) {
			switch p[i+1] {
			case 's':
				b.WriteString(client)
				i++
				continue
			case '%':
				b.WriteByte('%')
				i++
				continue
			}
		}
		b.WriteByte(p[i])
	}
	return b.String()
}
