package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	dbus "github.com/godbus/dbus/v5"
	avahi "github.com/holoplot/go-avahi"
)

// Limits of the avahi backend.
const (
	avahiCloseTimeout = 5 * time.Second // Close waits this long for avahi-daemon
	maxRenames        = 16              // collisions in a row before giving up
	avahiName         = "org.freedesktop.Avahi"
	avahiCollisionErr = "org.freedesktop.Avahi.CollisionError"
)

// avahiReachable reports whether avahi-daemon owns its name on the system
// bus. An activatable but stopped avahi does not count.
func avahiReachable(ctx context.Context) error {
	conn, err := dbus.ConnectSystemBus(dbus.WithContext(ctx))
	if err != nil {
		return err
	}
	defer conn.Close()
	return avahiOwned(ctx, conn)
}

func avahiOwned(ctx context.Context, conn *dbus.Conn) error {
	var has bool
	if err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.NameHasOwner", 0, avahiName).Store(&has); err != nil {
		return err
	}
	if !has {
		return ErrNoAvahi
	}
	return nil
}

// avahiAdv publishes through avahi-daemon: one entry group holds every
// export. Update only records the wanted set; one goroutine owns the
// D-Bus calls, so Update never waits on avahi-daemon.
type avahiAdv struct {
	cfg    Config
	log    *slog.Logger
	conn   *dbus.Conn
	server *avahi.Server
	group  *avahi.EntryGroup

	mu     sync.Mutex
	closed bool
	want   []*service // set by Update

	// Owned by run.
	published []*service        // what the group holds, names as published
	renamed   map[string]string // instance name → name avahi made us take

	kick    chan struct{}
	done    chan struct{}
	stopped chan struct{}
}

func newAvahi(cfg Config) (*avahiAdv, error) {
	ctx, cancel := context.WithTimeout(context.Background(), avahiProbeTimeout)
	defer cancel()
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoAvahi, err)
	}
	if err := avahiOwned(ctx, conn); err != nil {
		conn.Close()
		if errors.Is(err, ErrNoAvahi) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", ErrNoAvahi, err)
	}
	server, err := avahi.ServerNew(conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("discovery: avahi: %w", err)
	}
	group, err := server.EntryGroupNew()
	if err != nil {
		server.Close()
		return nil, fmt.Errorf("discovery: avahi entry group: %w", err)
	}
	a := &avahiAdv{
		cfg:     cfg,
		log:     cfg.Logger.With("backend", BackendAvahi),
		conn:    conn,
		server:  server,
		group:   group,
		renamed: make(map[string]string),
		kick:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	if v, err := server.GetVersionString(); err == nil {
		host, _ := server.GetHostNameFqdn()
		a.log.Debug("connected to avahi-daemon", "version", v, "host", host)
	}
	go a.run()
	return a, nil
}

func (a *avahiAdv) Backend() string { return BackendAvahi }

// Update hands the set to the publishing goroutine. The error names
// exports left out; avahi-daemon's own failures are logged.
func (a *avahiAdv) Update(exports []Export) error {
	svcs, err := buildServices(exports, a.cfg.Instance, a.cfg.Host, a.cfg.Board)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return ErrClosed
	}
	a.want = svcs
	select {
	case a.kick <- struct{}{}:
	default:
	}
	return err
}

// Close frees the entry group, which makes avahi-daemon send goodbyes,
// and closes the D-Bus connection. It waits at most avahiCloseTimeout for
// a daemon that does not answer.
func (a *avahiAdv) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	a.mu.Unlock()
	close(a.done)
	select {
	case <-a.stopped:
		return nil
	case <-time.After(avahiCloseTimeout):
	}
	a.conn.Close() // fails the calls that hang
	select {
	case <-a.stopped:
	case <-time.After(avahiCloseTimeout):
	}
	return errors.New("discovery: avahi-daemon did not answer in time; its goodbyes may be missing")
}

// run owns every D-Bus call: it publishes each new set, renames on
// collisions, and frees the group at Close.
func (a *avahiAdv) run() {
	defer close(a.stopped)
	renames := 0
	lost := a.conn.Context().Done()
	for {
		select {
		case <-a.done:
			a.free()
			return
		case <-lost:
			a.log.Error("lost the connection to the system bus; exports are no longer advertised")
			lost = nil
		case <-a.kick:
			renames = 0
			a.mu.Lock()
			want := a.want
			a.mu.Unlock()
			a.publish(want, false)
		case st := <-a.group.StateChangeChannel:
			switch st.State {
			case avahi.EntryGroupEstablished:
				a.log.Info("exports published through avahi-daemon", "exports", len(a.published))
			case avahi.EntryGroupCollision:
				renames++
				if renames > maxRenames {
					a.log.Error("instance names keep colliding; giving up", "renames", renames-1)
					continue
				}
				a.renameAll()
				a.mu.Lock()
				want := a.want
				a.mu.Unlock()
				a.publish(want, true)
			case avahi.EntryGroupFailure:
				a.log.Error("avahi-daemon failed to publish the exports", "err", st.Error)
			}
		}
	}
}

// publish puts svcs into the entry group. When only TXT records changed,
// they are updated in place; otherwise the group is reset (avahi sends
// goodbyes for what it held) and committed again.
func (a *avahiAdv) publish(svcs []*service, force bool) {
	named := make([]*service, len(svcs))
	for i, s := range svcs {
		c := *s
		if n, ok := a.renamed[s.instance]; ok {
			c.instance = n
		}
		named[i] = &c
	}
	ifindexes, ok := a.interfaces()
	if !force && a.sameNames(named) {
		for i, s := range named {
			if slices.Equal(s.txt, a.published[i].txt) {
				continue
			}
			for _, idx := range ifindexes {
				if err := a.group.UpdateServiceTxt(idx, avahi.ProtoUnspec, 0, s.instance, serviceType, "", avahiTXT(s.txt)); err != nil {
					a.log.Error("avahi: cannot update TXT", "export", s.export.Name, "instance", s.instance, "err", err)
				}
			}
			a.log.Info("export changed, re-announcing", "export", s.export.Name, "instance", s.instance)
		}
		a.published = named
		return
	}
	if err := a.group.Reset(); err != nil {
		a.log.Error("avahi: cannot reset the entry group", "err", err)
		return
	}
	for _, p := range a.published {
		if !slices.ContainsFunc(named, func(s *service) bool { return s.instance == p.instance }) {
			a.log.Info("export withdrawn", "export", p.export.Name, "instance", p.instance)
		}
	}
	a.published = nil
	if len(named) == 0 || !ok {
		return
	}
	for _, s := range named {
		if err := a.addService(s, ifindexes); err != nil {
			a.log.Error("avahi: cannot add the export", "export", s.export.Name, "instance", s.instance, "err", err)
			continue
		}
		a.published = append(a.published, s)
	}
	if len(a.published) == 0 {
		return
	}
	if err := a.group.Commit(); err != nil {
		a.log.Error("avahi: cannot commit the entry group", "err", err)
		return
	}
	for _, s := range a.published {
		a.log.Info("advertising export", "export", s.export.Name, "instance", s.instance)
	}
}

// addService adds one service on every interface, taking avahi's
// alternative name when another local client holds the name.
func (a *avahiAdv) addService(s *service, ifindexes []int32) error {
	for range maxRenames {
		var err error
		for _, idx := range ifindexes {
			err = a.group.AddService(idx, avahi.ProtoUnspec, 0, s.instance, serviceType, "", "", uint16(a.cfg.Port), avahiTXT(s.txt))
			if err != nil {
				break
			}
		}
		var derr dbus.Error
		if !errors.As(err, &derr) || derr.Name != avahiCollisionErr {
			return err
		}
		if !a.rename(s) {
			return err
		}
	}
	return errors.New("instance name keeps colliding")
}

// renameAll gives every published service avahi's alternative name: the
// entry group reports a collision without saying whose.
func (a *avahiAdv) renameAll() {
	for _, s := range a.published {
		a.rename(s)
	}
}

// rename moves s to avahi's alternative for its name ("disk on board #2")
// and remembers it for later Updates.
func (a *avahiAdv) rename(s *service) bool {
	alt, err := a.server.GetAlternativeServiceName(s.instance)
	if err != nil || alt == s.instance {
		a.log.Error("avahi: no alternative instance name", "instance", s.instance, "err", err)
		return false
	}
	a.log.Warn("instance name collision; avahi renamed the export's instance", "export", s.export.Name, "from", s.instance, "to", alt)
	for orig, cur := range a.renamed {
		if cur == s.instance {
			a.renamed[orig] = alt
			s.instance = alt
			return true
		}
	}
	a.renamed[s.instance] = alt
	s.instance = alt
	return true
}

// sameNames reports whether named publishes the same instances, in the
// same order, as the group holds.
func (a *avahiAdv) sameNames(named []*service) bool {
	return len(a.published) > 0 && slices.EqualFunc(named, a.published, func(x, y *service) bool {
		return x.instance == y.instance && x.export.Name == y.export.Name
	})
}

// interfaces returns the interface indexes to publish on: every one
// (InterfaceUnspec) or those configured that exist. ok is false when none
// of the configured ones does.
func (a *avahiAdv) interfaces() (idx []int32, ok bool) {
	if len(a.cfg.Interfaces) == 0 {
		return []int32{avahi.InterfaceUnspec}, true
	}
	for _, name := range a.cfg.Interfaces {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			a.log.Warn("interface not present; not advertising on it", "iface", name)
			continue
		}
		idx = append(idx, int32(ifi.Index))
	}
	return idx, len(idx) > 0
}

// free withdraws everything and closes the connection.
func (a *avahiAdv) free() {
	stop := make(chan struct{})
	go func() { // go-avahi blocks on a full state channel; keep it drained
		for {
			select {
			case <-a.group.StateChangeChannel:
			case <-stop:
				return
			}
		}
	}()
	if len(a.published) > 0 {
		a.log.Info("withdrawing exports; avahi-daemon sends the goodbyes", "exports", len(a.published))
	}
	a.server.EntryGroupFree(a.group)
	a.server.Close()
	close(stop)
}

func avahiTXT(txt []string) [][]byte {
	out := make([][]byte, len(txt))
	for i, t := range txt {
		out[i] = []byte(t)
	}
	return out
}
