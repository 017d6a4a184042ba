package discovery

import (
	"fmt"
	"strconv"
	"strings"
)

// TXT record keys; the table in the package doc describes them.
const (
	txtVersion = "txtvers"
	txtExport  = "export"
	txtSize    = "size"
	txtRO      = "ro"
	txtTLS     = "tls"
	txtBS      = "bs"
	txtDesc    = "desc"
	txtBoard   = "board"

	txtVersionValue = "1"
	maxTXTString    = 255 // RFC 6763 §6.1: one length byte per string
)

// txtRecord builds the TXT strings of one export. It fails when the
// export name cannot fit one string: a cut name would send clients to an
// export that does not exist. desc and board are cut to fit.
func txtRecord(e Export, board string) ([]string, error) {
	exp := txtExport + "=" + e.Name
	if len(exp) > maxTXTString {
		return nil, fmt.Errorf("export %q: name is %d bytes, TXT holds at most %d", truncUTF8(e.Name, 32)+"...", len(e.Name), maxTXTString-len(txtExport)-1)
	}
	txt := []string{txtVersion + "=" + txtVersionValue, exp}
	if e.Size > 0 {
		txt = append(txt, txtSize+"="+strconv.FormatInt(e.Size, 10))
	}
	txt = append(txt, txtRO+"="+bit(e.ReadOnly), txtTLS+"="+bit(e.TLS))
	if e.BlockSize > 1 {
		txt = append(txt, txtBS+"="+strconv.FormatUint(uint64(e.BlockSize), 10))
	}
	if d := cleanText(e.Description); d != "" {
		txt = append(txt, truncUTF8(txtDesc+"="+d, maxTXTString))
	}
	if b := cleanText(board); b != "" {
		txt = append(txt, truncUTF8(txtBoard+"="+b, maxTXTString))
	}
	return txt, nil
}

// escapeTXT writes one raw TXT string in the escaped form miekg/dns
// packs and unpacks: " and \ take a backslash, bytes outside printable
// ASCII become \DDD.
func escapeTXT(s string) string { return escapeBytes(s, `"\`) }

// unescapeTXT is the inverse of escapeTXT, for strings miekg/dns unpacked.
// A malformed escape is kept as it is.
func unescapeTXT(s string) string {
	raw, _, ok := unescape(s, false)
	if !ok {
		return s
	}
	return raw
}

func bit(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// parseTXT reads TXT strings into a map, as RFC 6763 §6.4 says: keys are
// case-insensitive (stored lower case), the first occurrence wins, a
// string without '=' is a key with an empty value, and one starting with
// '=' is ignored.
func parseTXT(txt []string) map[string]string {
	m := make(map[string]string, len(txt))
	for _, s := range txt {
		k, v, _ := strings.Cut(s, "=")
		if k == "" {
			continue
		}
		k = strings.ToLower(k)
		if _, dup := m[k]; !dup {
			m[k] = v
		}
	}
	return m
}
