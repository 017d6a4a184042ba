package discovery

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// mDNS groups and port, RFC 6762 §3 and §22.
const mdnsPort = 5353

var (
	group4 = &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: mdnsPort}
	group6 = &net.UDPAddr{IP: net.ParseIP("ff02::fb"), Port: mdnsPort}
)

// errAddrInUse is what joining a group already joined returns.
var errAddrInUse error = syscall.EADDRINUSE

// netipAddr converts a net.IP, unmapping IPv4-in-IPv6.
func netipAddr(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}

// maxPacket is the largest mDNS message read (RFC 6762 §17).
const maxPacket = 9000

// mconn is a UDP socket of one address family that reads and writes
// datagrams with the interface they came in on or go out of, so one
// socket serves every interface.
type mconn struct {
	v6 bool
	p4 *ipv4.PacketConn
	p6 *ipv6.PacketConn
	c  net.PacketConn
}

// listenMDNS opens a socket of one family. port 5353 shares the port with
// other responders (avahi-daemon) through SO_REUSEADDR and SO_REUSEPORT;
// port 0 is an ephemeral port for one-shot queries. Outgoing packets carry
// TTL 255 (RFC 6762 §11) and loop back to this host's other sockets.
func listenMDNS(v6 bool, port int) (*mconn, error) {
	network, addr := "udp4", fmt.Sprintf("0.0.0.0:%d", port)
	if v6 {
		network, addr = "udp6", fmt.Sprintf("[::]:%d", port)
	}
	lc := net.ListenConfig{Control: reusePort}
	c, err := lc.ListenPacket(context.Background(), network, addr)
	if err != nil {
		return nil, err
	}
	m := &mconn{v6: v6, c: c}
	var errs []error
	if v6 {
		m.p6 = ipv6.NewPacketConn(c)
		errs = append(errs,
			m.p6.SetControlMessage(ipv6.FlagInterface, true),
			m.p6.SetMulticastHopLimit(255),
			m.p6.SetHopLimit(255),
			m.p6.SetMulticastLoopback(true))
	} else {
		m.p4 = ipv4.NewPacketConn(c)
		errs = append(errs,
			m.p4.SetControlMessage(ipv4.FlagInterface, true),
			m.p4.SetMulticastTTL(255),
			m.p4.SetTTL(255),
			m.p4.SetMulticastLoopback(true))
	}
	for _, err := range errs {
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("%s socket options: %w", network, err)
		}
	}
	return m, nil
}

func (m *mconn) group() *net.UDPAddr {
	if m.v6 {
		return group6
	}
	return group4
}

// join joins the mDNS group on one interface.
func (m *mconn) join(ifi *net.Interface) error {
	if m.v6 {
		return m.p6.JoinGroup(ifi, m.group())
	}
	return m.p4.JoinGroup(ifi, m.group())
}

func (m *mconn) leave(ifi *net.Interface) error {
	if m.v6 {
		return m.p6.LeaveGroup(ifi, m.group())
	}
	return m.p4.LeaveGroup(ifi, m.group())
}

// readFrom reads one datagram and the index of the interface it came in
// on (0 when the system does not say).
func (m *mconn) readFrom(b []byte) (n, ifindex int, src *net.UDPAddr, err error) {
	var from net.Addr
	if m.v6 {
		var cm *ipv6.ControlMessage
		n, cm, from, err = m.p6.ReadFrom(b)
		if cm != nil {
			ifindex = cm.IfIndex
		}
	} else {
		var cm *ipv4.ControlMessage
		n, cm, from, err = m.p4.ReadFrom(b)
		if cm != nil {
			ifindex = cm.IfIndex
		}
	}
	src, _ = from.(*net.UDPAddr)
	if err == nil && src == nil {
		err = fmt.Errorf("datagram from %v", from)
	}
	return n, ifindex, src, err
}

// writeTo sends one datagram out of interface ifindex (0: as routed).
func (m *mconn) writeTo(b []byte, ifindex int, dst *net.UDPAddr) error {
	var err error
	if m.v6 {
		var cm *ipv6.ControlMessage
		if ifindex != 0 {
			cm = &ipv6.ControlMessage{IfIndex: ifindex}
		}
		_, err = m.p6.WriteTo(b, cm, dst)
	} else {
		var cm *ipv4.ControlMessage
		if ifindex != 0 {
			cm = &ipv4.ControlMessage{IfIndex: ifindex}
		}
		_, err = m.p4.WriteTo(b, cm, dst)
	}
	return err
}

func (m *mconn) close() error { return m.c.Close() }

// ifaceAddrs is one interface and the addresses it may advertise.
type ifaceAddrs struct {
	ifi      net.Interface
	addrs    []netip.Addr   // usable, sorted, without zone
	prefixes []netip.Prefix // the same, with their prefix lengths
}

func (ia ifaceAddrs) has4() bool { return slices.ContainsFunc(ia.addrs, netip.Addr.Is4) }
func (ia ifaceAddrs) has6() bool { return slices.ContainsFunc(ia.addrs, netip.Addr.Is6) }

// contains reports whether a is on one of the interface's subnets.
func (ia ifaceAddrs) contains(a netip.Addr) bool {
	a = a.WithZone("").Unmap()
	for _, p := range ia.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// listInterfaces returns the interfaces to use: those named, or every up,
// multicast-capable, non-loopback one, each with its usable addresses.
// Interfaces without a usable address are left out; so are named ones
// that do not exist (now), which missing lists.
func listInterfaces(names []string) (ifs []ifaceAddrs, missing []string, err error) {
	all, err := net.Interfaces()
	if err != nil {
		return nil, nil, err
	}
	for _, name := range names {
		if !slices.ContainsFunc(all, func(ifi net.Interface) bool { return ifi.Name == name }) {
			missing = append(missing, name)
		}
	}
	for _, ifi := range all {
		if len(names) > 0 && !slices.Contains(names, ifi.Name) {
			continue
		}
		if ifi.Flags&net.FlagUp == 0 || ifi.Flags&net.FlagMulticast == 0 || ifi.Flags&net.FlagLoopback != 0 {
			continue
		}
		ia := ifaceAddrs{ifi: ifi}
		addrs, err := ifi.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			if !usableAddr(ip) {
				continue
			}
			ones, _ := ipn.Mask.Size()
			ia.addrs = append(ia.addrs, ip)
			ia.prefixes = append(ia.prefixes, netip.PrefixFrom(ip, ones).Masked())
		}
		if len(ia.addrs) == 0 {
			continue
		}
		slices.SortFunc(ia.addrs, netip.Addr.Compare)
		ifs = append(ifs, ia)
	}
	return ifs, missing, nil
}
