package discovery

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// DNS-SD names of the service.
const (
	serviceType = "_nbd._tcp"                     // RFC 6763 §7 service type
	domain      = "local."                        // RFC 6762 §3
	serviceName = serviceType + "." + domain      // PTR owner of every instance
	enumName    = "_services._dns-sd._udp.local." // RFC 6763 §9 service type enumeration
	maxLabel    = 63                              // RFC 1035 §2.3.4 label limit, bytes
)

// escapeLabel writes one DNS label in the presentation format that
// miekg/dns uses for names it unpacks: the bytes . space ' @ ; ( ) " \
// take a backslash, bytes outside printable ASCII become \DDD. Names in
// this form compare equal (case-insensitively) to names read off the wire.
func escapeLabel(label string) string { return escapeBytes(label, ". '@;()\"\\") }

// escapeBytes writes s in DNS presentation format: a backslash before each
// byte in special, \DDD for each byte outside printable ASCII.
func escapeBytes(s, special string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case strings.IndexByte(special, c) >= 0:
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < ' ' || c > '~':
			fmt.Fprintf(&b, "\\%03d", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// firstLabel splits a presentation-format name into its first label,
// unescaped to raw bytes, and the rest after the dot. ok is false for a
// malformed escape.
func firstLabel(name string) (label, rest string, ok bool) {
	return unescape(name, true)
}

// unescape decodes \DDD and \X escapes. With atDot it stops at the first
// unescaped dot and returns what follows it as rest.
func unescape(name string, atDot bool) (raw, rest string, ok bool) {
	var b []byte
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '.' && atDot:
			return string(b), name[i+1:], true
		case c == '\\':
			if i+3 < len(name) && isDigit(name[i+1]) && isDigit(name[i+2]) && isDigit(name[i+3]) {
				n, _ := strconv.Atoi(name[i+1 : i+4])
				if n > 255 {
					return "", "", false
				}
				b = append(b, byte(n))
				i += 3
				continue
			}
			if i+1 >= len(name) {
				return "", "", false
			}
			b = append(b, name[i+1])
			i++
		default:
			b = append(b, c)
		}
	}
	return string(b), "", true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// instanceFQDN is the escaped owner name of an instance's SRV and TXT.
func instanceFQDN(instance string) string {
	return escapeLabel(instance) + "." + serviceName
}

// truncUTF8 cuts s to at most n bytes without splitting a character.
func truncUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// cleanText makes s valid UTF-8 without control characters, which
// RFC 6763 §4.1.1 keeps out of instance names.
func cleanText(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return -1
		}
		return r
	}, s)
}

// renderInstance expands the instance template for one export: %e the
// export name ("(default)" for NBD's default export, ""), %h the host,
// %% a percent sign. Unknown verbs stay as they are. The result is cut to
// 63 bytes.
func renderInstance(template, export, host string) string {
	if export == "" {
		export = "(default)"
	}
	var b strings.Builder
	for i := 0; i < len(template); i++ {
		c := template[i]
		if c != '%' || i+1 == len(template) {
			b.WriteByte(c)
			continue
		}
		switch template[i+1] {
		case 'e':
			b.WriteString(export)
		case 'h':
			b.WriteString(host)
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte(c)
			continue
		}
		i++
	}
	name := strings.TrimSpace(cleanText(b.String()))
	if name == "" {
		name = cleanText(export)
	}
	return truncUTF8(name, maxLabel)
}

// uniqueInstance returns name, or name numbered " #2", " #3", ... (cut
// to fit 63 bytes) if taken says the plain name is in use. taken is
// compared case-insensitively, as DNS compares names.
func uniqueInstance(name string, taken map[string]bool) string {
	if !taken[strings.ToLower(name)] {
		return name
	}
	for n := 2; ; n++ {
		suffix := " #" + strconv.Itoa(n)
		cand := truncUTF8(name, maxLabel-len(suffix)) + suffix
		if !taken[strings.ToLower(cand)] {
			return cand
		}
	}
}

// hostLabel turns a host name into one DNS label of letters, digits and
// hyphens: the first label of name, other bytes replaced by '-'. An empty
// result becomes "boardnbd".
func hostLabel(name string) string {
	name, _, _ = strings.Cut(name, ".")
	b := []byte(truncUTF8(name, maxLabel))
	for i, c := range b {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			b[i] = '-'
		}
	}
	s := strings.Trim(string(b), "-")
	if s == "" {
		return "boardnbd"
	}
	return s
}
