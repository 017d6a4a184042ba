package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"boardnbd/config"
	"boardnbd/nbd"
	"boardnbd/nbd/backend"
)

// exportSet is the appliance's answer to "which export does this client
// get": it resolves names against the configured exports, enforces allow
// lists and connection limits, and hands out storage. It implements
// nbd.Exports.
type exportSet struct {
	log  *slog.Logger
	mu   sync.RWMutex
	list []*served
}

// served is one configured export with its open storage.
type served struct {
	cfg   config.Export
	exp   nbd.Export
	log   *slog.Logger
	conns atomic.Int32

	// storage is opened once and shared by every connection, unless the
	// path names a per-client file (%s), which each connection opens.
	storage backend.Backend
	desc    backend.Description
}

var _ nbd.Exports = (*exportSet)(nil)

// Lookup implements nbd.Exports. A client outside an export's allow list is
// told the export does not exist, as LIST does not show it either.
func (s *exportSet) Lookup(name string, remote net.Addr) (*nbd.Export, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var e *served
	if name == "" && len(s.list) == 1 {
		e = s.list[0]
	}
	for _, x := range s.list {
		if x.cfg.Name == name {
			e = x
		}
	}
	if e == nil {
		return nil, nbd.ErrUnknownExport
	}
	if !e.cfg.Allows(addrOf(remote)) {
		e.log.Info("client refused: not in the export's allow list", "remote", remote.String())
		return nil, nbd.ErrUnknownExport
	}
	return &e.exp, nil
}

// List implements nbd.Exports.
func (s *exportSet) List(remote net.Addr) []*nbd.Export {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ip := addrOf(remote)
	out := make([]*nbd.Export, 0, len(s.list))
	for _, e := range s.list {
		if e.cfg.Allows(ip) {
			out = append(out, &e.exp)
		}
	}
	return out
}

// exports returns the served exports, for logs and for discovery.
func (s *exportSet) exports() []*served {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return append([]*served(nil), s.list...)
}

// close releases every export's storage.
func (s *exportSet) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.list {
		if e.storage != nil {
			e.storage.Close()
		}
	}
	s.list = nil
}

// addrOf extracts the client's IP address; a client that is not on IP
// (inetd over a pipe) gets the zero address.
func addrOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// newServed opens an export's storage (unless it is per client) and builds
// its protocol view.
func newServed(cfg config.Export, log *slog.Logger) (*served, error) {
	e := &served{cfg: cfg, log: log.With("export", cfg.Name)}
	e.exp = nbd.Export{
		Name:        cfg.Name,
		Description: cfg.Description,
		ReadOnly:    cfg.ReadOnly,
		NoFlush:     !cfg.Flush,
		NoFUA:       !cfg.FUA,
		NoTrim:      !cfg.Trim,
		IdleTimeout: cfg.IdleTimeout,
		Open:        e.open,
	}
	if !cfg.PerClient() {
		b, d, err := openStorage(&cfg, cfg.Path)
		if err != nil {
			return nil, err
		}
		e.storage, e.desc = b, d
		if d.ReadOnly && !cfg.ReadOnly {
			e.log.Warn("serving read-only", "path", cfg.Path, "reason", d.ReadOnlyReason)
		}
	}
	return e, nil
}

// openStorage opens what an export serves from path.
func openStorage(cfg *config.Export, path string) (backend.Backend, backend.Description, error) {
	size := cfg.Size
	if cfg.Offset > 0 {
		size = 0 // the slice below takes the window
	}
	f, err := backend.Open(path, backend.Options{
		ReadOnly:   cfg.ReadOnly,
		AllowInUse: cfg.AllowInUse,
		Size:       size,
	})
	if err != nil {
		return nil, backend.Description{}, fmt.Errorf("export %q: %w", cfg.Name, err)
	}
	d := f.Describe()
	var b backend.Backend = f
	if cfg.Offset > 0 {
		b, err = backend.NewSlice(f, cfg.Offset, cfg.Size)
		if err != nil {
			f.Close()
			return nil, d, fmt.Errorf("export %q: %w", cfg.Name, err)
		}
		d.Size = b.Size()
	}
	return b, d, nil
}

// open is the export's nbd.Export.Open: it counts the connection against
// the export's limit and returns storage whose Close releases it.
func (e *served) open(remote net.Addr) (backend.Backend, error) {
	if limit := e.cfg.MaxConnections; limit > 0 && int(e.conns.Add(1)) > limit {
		e.conns.Add(-1)
		return nil, fmt.Errorf("%w: export %q already has its maximum of %d connections",
			nbd.ErrNotAllowed, e.cfg.Name, limit)
	} else if limit <= 0 {
		e.conns.Add(1)
	}
	release := func() error { e.conns.Add(-1); return nil }
	if e.storage != nil {
		return &connStorage{Backend: e.storage, close: release}, nil
	}
	path := e.cfg.PathFor(addrOf(remote))
	b, _, err := openStorage(&e.cfg, path)
	if err != nil {
		release()
		if errors.Is(err, backend.ErrInUse) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", nbd.ErrUnavailable, err)
	}
	return &connStorage{Backend: b, close: func() error {
		release()
		return b.Close()
	}}, nil
}

// connStorage is one connection's handle on an export's storage.
type connStorage struct {
	backend.Backend
	once  sync.Once
	close func() error
}

func (c *connStorage) Close() error {
	var err error
	c.once.Do(func() { err = c.close() })
	return err
}
