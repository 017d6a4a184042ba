// Package discovery advertises NBD exports with multicast DNS service
// discovery (mDNS, RFC 6762; DNS-SD, RFC 6763) and browses for them.
//
// Each export is one DNS-SD service instance of type _nbd._tcp in the
// .local domain. Its SRV record names the host and the NBD TCP port; its
// TXT record describes the export. Netboot tools, avahi-browse, Apple's
// dns-sd and python-zeroconf all see the same instances.
//
// Two backends publish them (Config.Backend):
//
//   - "avahi": avahi-daemon's D-Bus API. One entry group holds every
//     export; avahi answers queries, announces, renames on collisions and
//     sends the goodbyes. Chosen by "auto" whenever avahi-daemon owns its
//     name on the system bus, because two responders on UDP port 5353 of
//     one host steal each other's unicast packets.
//   - "builtin": a responder of this package on UDP 5353 (IPv4 and IPv6)
//     that answers each interface with that interface's own addresses,
//     announces new and changed exports (three times: at once, after one
//     and after three seconds), sends goodbyes (TTL 0) for removed ones
//     and on Close, and re-announces when an interface's addresses change.
//     It does no probing: see the README for what that means on a network
//     of identically named boards.
//
// Browse is a one-shot DNS-SD browser: it sends queries from an ephemeral
// port (RFC 6762 §5.1 "legacy unicast"), so every responder answers it
// by unicast and it works beside an avahi-daemon that owns port 5353.
//
// The package owns names, records and the mDNS traffic; it knows nothing
// of how exports are served.
//
// # TXT keys
//
// Every key is lower case, every string "key=value" is at most 255 bytes,
// and the record always holds txtvers first.
//
//	key      value                                   present
//	txtvers  1, the version of this key set          always
//	export   the NBD export name, to ask the server   always
//	size     export size in bytes, decimal           when known (> 0)
//	ro       1 read-only, 0 writable                 always
//	tls      1 TLS required, 0 plain                 always
//	bs       minimum block size in bytes, decimal    when > 1 is known (absent: 1)
//	desc     description, cut to fit 255 bytes       when not empty
//	board    free text naming the board              when not empty
//
// Readers ignore keys they do not know; a later incompatible change
// raises txtvers.
//
// # Instance names
//
// Config.Instance renders the instance name: %e the export name, %h the
// host name, %% a percent sign; the default is "%e on %h". Instance names
// are UTF-8 and may hold dots and spaces; they are cut to 63 bytes and,
// when two exports render alike, numbered " #2", " #3", ...
package discovery
