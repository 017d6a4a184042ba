package discovery

import (
	"errors"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Timing of the built-in responder.
const (
	pollInterval  = 3 * time.Second        // how often interfaces and addresses are read
	announceCount = 3                      // unsolicited responses per change, RFC 6762 §8.3: at least two
	announceGap   = time.Second            // first gap between them; it doubles
	goodbyeCount  = 2                      // goodbye packets at Close, for lossy links
	goodbyeGap    = 250 * time.Millisecond // between them
	sendLimit     = 1400                   // bytes per message we send, below a 1500-byte MTU
)

// builtin is the responder of this package: it answers mDNS queries on
// UDP 5353 and sends announcements and goodbyes.
//
// hashicorp/mdns's Server is not used, though its Zone contract (records
// for one question) is kept in zone.Records: the Server hands Records no
// interface, and its per-interface sockets all bind 224.0.0.251:5353, so
// each receives every interface's queries and answers a query on one link
// with another link's addresses. It also answers every query by unicast
// and cannot send announcements or goodbyes. Here one socket per address
// family reads the arrival interface of every query (IP_PKTINFO) and sends
// out of a chosen one.
type builtin struct {
	cfg  Config
	log  *slog.Logger
	host string // escaped FQDN
	port uint16
	c4   *mconn // nil without IPv4
	c6   *mconn // nil without IPv6

	mu       sync.Mutex
	closed   bool
	services []*service
	ifaces   map[int]ifaceAddrs // by index
	missing  map[string]bool    // configured interfaces not present, already logged
	pending  []*announce

	kick   chan struct{} // wakes the loop after Update
	done   chan struct{} // closed by Close
	loopWG sync.WaitGroup
	readWG sync.WaitGroup
}

// announce is a scheduled series of unsolicited responses.
type announce struct {
	ifindex int    // 0: every interface
	fqdn    string // "": every service
	left    int
	next    time.Time
	gap     time.Duration
}

func newBuiltin(cfg Config) (*builtin, error) {
	b := &builtin{
		cfg:     cfg,
		log:     cfg.Logger.With("backend", BackendBuiltin),
		host:    escapeLabel(cfg.Host) + "." + domain,
		port:    uint16(cfg.Port),
		ifaces:  make(map[int]ifaceAddrs),
		missing: make(map[string]bool),
		kick:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	var err4, err6 error
	b.c4, err4 = listenMDNS(false, mdnsPort)
	b.c6, err6 = listenMDNS(true, mdnsPort)
	switch {
	case b.c4 == nil && b.c6 == nil:
		return nil, errors.Join(errors.New("discovery: cannot open UDP port 5353"), err4, err6)
	case b.c4 == nil:
		b.log.Warn("no IPv4 mDNS socket; advertising over IPv6 only", "err", err4)
	case b.c6 == nil:
		b.log.Warn("no IPv6 mDNS socket; advertising over IPv4 only", "err", err6)
	}
	b.poll()
	for _, c := range []*mconn{b.c4, b.c6} {
		if c != nil {
			b.readWG.Add(1)
			go b.read(c)
		}
	}
	b.loopWG.Add(1)
	go b.loop()
	return b, nil
}

func (b *builtin) Backend() string { return BackendBuiltin }

// Update replaces the advertised set. Goodbyes for removed exports go out
// before it returns; announcements of new and changed ones are sent by
// the responder's goroutine. The error names exports left out.
func (b *builtin) Update(exports []Export) error {
	svcs, err := buildServices(exports, b.cfg.Instance, b.cfg.Host, b.cfg.Board)
	now := time.Now()
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	var removed []*service
	for _, o := range b.services {
		if !slices.ContainsFunc(svcs, func(s *service) bool { return strings.EqualFold(s.fqdn, o.fqdn) }) {
			removed = append(removed, o)
		}
	}
	for _, s := range svcs {
		i := slices.IndexFunc(b.services, func(o *service) bool { return strings.EqualFold(s.fqdn, o.fqdn) })
		if i >= 0 && b.services[i].equal(s) {
			continue
		}
		if i >= 0 {
			b.log.Info("export changed, re-announcing", "export", s.export.Name, "instance", s.instance)
		} else {
			b.log.Info("advertising export", "export", s.export.Name, "instance", s.instance)
		}
		b.pending = slices.DeleteFunc(b.pending, func(a *announce) bool { return a.fqdn == s.fqdn })
		b.pending = append(b.pending, &announce{fqdn: s.fqdn, left: announceCount, next: now, gap: announceGap})
	}
	b.services = svcs
	ifaces := b.ifaceList()
	b.mu.Unlock()

	if len(removed) > 0 {
		for _, s := range removed {
			b.log.Info("export withdrawn", "export", s.export.Name, "instance", s.instance)
		}
		last := len(svcs) == 0
		for _, ia := range ifaces {
			z := b.zone(ia, nil)
			b.send(ia, goodbye(z.announcement(removed, last, last)))
		}
	}
	select {
	case b.kick <- struct{}{}:
	default:
	}
	return err
}

// Close stops the responder after sending goodbyes for every record.
func (b *builtin) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	svcs := b.services
	ifaces := b.ifaceList()
	b.mu.Unlock()
	close(b.done)
	b.loopWG.Wait()

	if len(svcs) > 0 {
		for i := range goodbyeCount {
			if i > 0 {
				time.Sleep(goodbyeGap)
			}
			for _, ia := range ifaces {
				z := b.zone(ia, svcs)
				b.send(ia, goodbye(z.announcement(svcs, true, true)))
			}
		}
		b.log.Info("sent goodbyes", "exports", len(svcs))
	}
	for _, c := range []*mconn{b.c4, b.c6} {
		if c != nil {
			c.close()
		}
	}
	b.readWG.Wait()
	return nil
}

// loop announces what is due and polls the interfaces, until Close.
func (b *builtin) loop() {
	defer b.loopWG.Done()
	poll := time.NewTicker(pollInterval)
	defer poll.Stop()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-b.done:
			return
		case <-poll.C:
			b.poll()
		case <-b.kick:
		case <-timer.C:
		}
		next := b.sendDue(time.Now())
		timer.Reset(time.Until(next))
	}
}

// sendDue sends the announcements due at now and returns when the next
// one is.
func (b *builtin) sendDue(now time.Time) time.Time {
	next := now.Add(time.Hour)
	type batch struct {
		ia   ifaceAddrs
		all  bool
		svcs []*service
	}
	b.mu.Lock()
	batches := make(map[int]*batch)
	for _, a := range b.pending {
		if a.next.After(now) {
			continue
		}
		for _, ia := range b.ifaceList() {
			if a.ifindex != 0 && a.ifindex != ia.ifi.Index {
				continue
			}
			bt := batches[ia.ifi.Index]
			if bt == nil {
				bt = &batch{ia: ia}
				batches[ia.ifi.Index] = bt
			}
			if a.fqdn == "" {
				bt.all = true
				continue
			}
			if i := slices.IndexFunc(b.services, func(s *service) bool { return s.fqdn == a.fqdn }); i >= 0 && !slices.Contains(bt.svcs, b.services[i]) {
				bt.svcs = append(bt.svcs, b.services[i])
			}
		}
		a.left--
		a.next = now.Add(a.gap)
		a.gap *= 2
	}
	b.pending = slices.DeleteFunc(b.pending, func(a *announce) bool { return a.left <= 0 })
	for _, a := range b.pending {
		if a.next.Before(next) {
			next = a.next
		}
	}
	for _, bt := range batches {
		if bt.all {
			bt.svcs = b.services
		}
	}
	b.mu.Unlock()

	for _, bt := range batches {
		if len(bt.svcs) == 0 {
			continue
		}
		z := b.zone(bt.ia, nil)
		b.send(bt.ia, z.announcement(bt.svcs, true, true))
	}
	return next
}

// poll reads the interfaces: new ones are joined and announced on,
// changed addresses are re-announced, gone ones are left.
func (b *builtin) poll() {
	ifs, missing, err := listInterfaces(b.cfg.Interfaces)
	if err != nil {
		b.log.Warn("cannot list network interfaces", "err", err)
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	for _, name := range missing {
		if !b.missing[name] {
			b.missing[name] = true
			b.log.Warn("interface not present; will advertise on it when it appears", "iface", name)
		}
	}
	seen := make(map[int]bool)
	now := time.Now()
	for _, ia := range ifs {
		seen[ia.ifi.Index] = true
		delete(b.missing, ia.ifi.Name)
		old, ok := b.ifaces[ia.ifi.Index]
		if ok && slices.Equal(old.addrs, ia.addrs) {
			continue
		}
		if !ok {
			b.log.Info("advertising on interface", "iface", ia.ifi.Name, "addrs", ia.addrs)
		} else {
			b.log.Info("interface addresses changed, re-announcing", "iface", ia.ifi.Name, "addrs", ia.addrs)
		}
		b.joinGroups(ia, old, ok)
		b.ifaces[ia.ifi.Index] = ia
		if len(b.services) > 0 {
			b.pending = append(b.pending, &announce{ifindex: ia.ifi.Index, left: announceCount, next: now, gap: announceGap})
		}
	}
	for idx, ia := range b.ifaces {
		if !seen[idx] {
			b.log.Info("interface gone", "iface", ia.ifi.Name)
			for _, c := range []*mconn{b.c4, b.c6} {
				if c != nil {
					c.leave(&ia.ifi) // the interface may be gone already
				}
			}
			delete(b.ifaces, idx)
		}
	}
}

// joinGroups joins the mDNS group of each family the interface has an
// address of and the old state had not joined yet.
func (b *builtin) joinGroups(ia, old ifaceAddrs, hadOld bool) {
	join := func(c *mconn, now, before bool) {
		if c == nil || !now || (hadOld && before) {
			return
		}
		if err := c.join(&ia.ifi); err != nil && !errors.Is(err, errAddrInUse) {
			b.log.Warn("cannot join the mDNS group", "iface", ia.ifi.Name, "ipv6", c.v6, "err", err)
		}
	}
	join(b.c4, ia.has4(), old.has4())
	join(b.c6, ia.has6(), old.has6())
}

// ifaceList returns the interfaces in index order. b.mu is held.
func (b *builtin) ifaceList() []ifaceAddrs {
	var l []ifaceAddrs
	for _, ia := range b.ifaces {
		l = append(l, ia)
	}
	slices.SortFunc(l, func(x, y ifaceAddrs) int { return x.ifi.Index - y.ifi.Index })
	return l
}

// zone is what interface ia answers. With svcs nil it takes the current
// services (taking b.mu).
func (b *builtin) zone(ia ifaceAddrs, svcs []*service) *zone {
	if svcs == nil {
		b.mu.Lock()
		svcs = b.services
		b.mu.Unlock()
	}
	return &zone{host: b.host, port: b.port, services: svcs, addrs: ia.addrs}
}

// send multicasts records on one interface, over each family it has,
// split into messages that fit sendLimit.
func (b *builtin) send(ia ifaceAddrs, rrs []dns.RR) {
	if len(rrs) == 0 {
		return
	}
	for _, msg := range packResponses(&dns.Msg{}, rrs, nil) {
		for _, c := range []*mconn{b.c4, b.c6} {
			if c == nil || (c.v6 && !ia.has6()) || (!c.v6 && !ia.has4()) {
				continue
			}
			dst := *c.group()
			if c.v6 {
				dst.Zone = ia.ifi.Name
			}
			if err := c.writeTo(msg, ia.ifi.Index, &dst); err != nil {
				b.log.Debug("mDNS send failed", "iface", ia.ifi.Name, "err", err)
			}
		}
	}
}

// read answers the queries that arrive on c, until c is closed.
func (b *builtin) read(c *mconn) {
	defer b.readWG.Done()
	buf := make([]byte, maxPacket)
	for {
		n, ifindex, src, err := c.readFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-b.done:
				return
			case <-time.After(100 * time.Millisecond): // a persistent error must not spin
			}
			continue
		}
		b.handle(c, buf[:n], ifindex, src)
	}
}

// handle answers one query (RFC 6762 §6): by unicast to a legacy querier
// (source port not 5353) or to a question with the unicast-response bit,
// else by multicast on the interface it came in on.
func (b *builtin) handle(c *mconn, pkt []byte, ifindex int, src *net.UDPAddr) {
	var q dns.Msg
	if err := q.Unpack(pkt); err != nil || q.Response || q.Opcode != dns.OpcodeQuery || q.Rcode != dns.RcodeSuccess {
		return // §18.3, §18.11: ignore; responses are not ours to judge
	}
	b.mu.Lock()
	ia, ok := b.ifaces[ifindex]
	if !ok && ifindex == 0 {
		srcAddr, _ := netipAddr(src.IP)
		for _, cand := range b.ifaces {
			if cand.contains(srcAddr) {
				ia, ok = cand, true
				break
			}
		}
	}
	b.mu.Unlock()
	if !ok {
		return // not an interface we advertise on
	}
	z := b.zone(ia, nil)
	var answers []dns.RR
	unicast := true
	for _, question := range q.Question {
		rrs := z.Records(question)
		if len(rrs) > 0 && question.Qclass&unicastResponse == 0 {
			unicast = false
		}
		answers = append(answers, rrs...)
	}
	answers = suppressKnown(answers, q.Answer)
	if len(answers) == 0 {
		return
	}
	extra := suppressKnown(z.additional(answers), q.Answer)

	resp := &dns.Msg{}
	dst := src
	switch {
	case src.Port != mdnsPort: // legacy unicast, §6.7
		resp.Id = q.Id
		resp.Question = q.Question
		answers, extra = legacy(answers), legacy(extra)
	case unicast: // §5.4
	default:
		g := *c.group()
		if c.v6 {
			g.Zone = ia.ifi.Name
		}
		dst = &g
	}
	for _, msg := range packResponses(resp, answers, extra) {
		if err := c.writeTo(msg, ia.ifi.Index, dst); err != nil {
			b.log.Debug("mDNS answer failed", "iface", ia.ifi.Name, "to", dst, "err", err)
		}
	}
}

// suppressKnown drops answers the querier listed as known with at least
// half their TTL left (known-answer suppression, RFC 6762 §7.1).
func suppressKnown(rrs, known []dns.RR) []dns.RR {
	if len(known) == 0 {
		return rrs
	}
	return slices.DeleteFunc(rrs, func(rr dns.RR) bool {
		for _, k := range known {
			if sameRecord(rr, k) && k.Header().Ttl >= rr.Header().Ttl/2 {
				return true
			}
		}
		return false
	})
}

// sameRecord compares name, type, class (without the cache-flush bit)
// and data.
func sameRecord(a, b dns.RR) bool {
	a, b = dns.Copy(a), dns.Copy(b)
	a.Header().Class &^= cacheFlush
	b.Header().Class &^= cacheFlush
	return dns.IsDuplicate(a, b)
}

// packResponses packs answers (and as many extra records as fit) into
// response messages of at most sendLimit bytes, with the header and
// question of tmpl. A single record larger than the limit is sent alone.
func packResponses(tmpl *dns.Msg, answers, extra []dns.RR) [][]byte {
	newMsg := func() *dns.Msg {
		m := &dns.Msg{MsgHdr: dns.MsgHdr{Id: tmpl.Id, Response: true, Authoritative: true, Opcode: dns.OpcodeQuery}, Compress: true}
		m.Question = tmpl.Question
		return m
	}
	var msgs []*dns.Msg
	m := newMsg()
	for _, rr := range answers {
		m.Answer = append(m.Answer, rr)
		if m.Len() > sendLimit && len(m.Answer) > 1 {
			m.Answer = m.Answer[:len(m.Answer)-1]
			msgs = append(msgs, m)
			m = newMsg()
			m.Answer = append(m.Answer, rr)
		}
	}
	for _, rr := range extra {
		m.Extra = append(m.Extra, rr)
		if m.Len() > sendLimit {
			m.Extra = m.Extra[:len(m.Extra)-1]
			break
		}
	}
	msgs = append(msgs, m)
	var out [][]byte
	for _, m := range msgs {
		if buf, err := m.Pack(); err == nil {
			out = append(out, buf)
		}
	}
	return out
}
