// Package discoverytest is a network lab for the tests of discovery and of
// the boardnbd binary: two network namespaces joined by a veth pair, so
// that every mDNS packet a test sends stays on that pair, and an
// avahi-daemon with its own D-Bus in a namespace. It needs root, ip(8),
// dbus-daemon and avahi-daemon; the callers check for those and say how
// to install them. It exists on Linux only.
package discoverytest
