package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"boardnbd/config"
	"boardnbd/nbd"
	"boardnbd/nbd/backend"
)

// exportSet is the appliance's answer to "which export does this client
// get": it resolves names against the configured exports, enforces allow
// lists and connection limits, and hands out storage. It implements
// nbd.Exports. A reload swaps its list; connections keep what they opened.
type exportSet struct {
	mu   sync.RWMutex
	list []*served
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

// exports returns the served exports.
func (s *exportSet) exports() []*served {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return append([]*served(nil), s.list...)
}

// swap installs a new list and returns the old one.
func (s *exportSet) swap(list []*served) []*served {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.list
	s.list = list
	return old
}

// close retires every export; storage closes when its last connection does.
func (s *exportSet) close() {
	for _, e := range s.swap(nil) {
		e.retire()
	}
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

// served is one configured export. Its storage is opened at load and
// shared by every connection; a path or overlay with %s gives each client
// address its own, shared by that client's connections. Storage that
// vanished (a USB disk unplugged) is reopened when a client next asks, so a
// device plugged in later becomes available without a restart.
type served struct {
	cfg   config.Export
	exp   nbd.Export
	log   *slog.Logger
	conns atomic.Int32

	mu      sync.Mutex
	cache   map[string]*storage // by expanded path and overlay
	retired bool
}

// storage is an opened stack (file or multifile, slice, persistent
// overlay), counted: the cache holds one reference, each connection one.
type storage struct {
	b    backend.Backend
	desc backend.Description
	fi   fs.FileInfo // of the path when opened, to notice a replaced device
	path string
	refs atomic.Int32
}

func (s *storage) release() {
	if s.refs.Add(-1) == 0 {
		s.b.Close()
	}
}

// fresh reports whether the path still names what was opened.
func (s *storage) fresh() bool {
	fi, err := os.Stat(s.path)
	return err == nil && os.SameFile(fi, s.fi)
}

// newServed builds an export. Unless the export is per client or lazy it
// opens the storage now: a missing path leaves it unavailable (and logged),
// any other failure is an error.
func newServed(cfg config.Export, tlsCfg config.TLS, log *slog.Logger, lazy bool) (*served, error) {
	e := &served{cfg: cfg, log: log.With("export", cfg.Name), cache: map[string]*storage{}}
	e.exp = nbd.Export{
		Name:        cfg.Name,
		Description: cfg.Description,
		ReadOnly:    cfg.ReadOnly,
		NoFlush:     !cfg.Flush,
		NoFUA:       !cfg.FUA,
		NoTrim:      !cfg.Trim,
		NoMultiConn: cfg.CopyOnWrite == config.CopyOnWriteConnection,
		IdleTimeout: cfg.IdleTimeout,
		TLSOnly:     cfg.TLS == config.TLSRequired || tlsCfg.EffectiveMode() == config.TLSRequired,
		Open:        e.open,
	}
	if e.perClient() || lazy {
		return e, nil
	}
	st, err := e.acquire(netip.Addr{})
	switch {
	case errors.Is(err, fs.ErrNotExist):
		e.log.Warn("storage absent; export unavailable until it appears", "path", cfg.Path)
	case err != nil:
		return nil, err
	default:
		st.release() // the cache keeps it open
		if st.desc.ReadOnly && !cfg.ReadOnly && cfg.CopyOnWrite == "" {
			e.log.Warn("serving read-only", "path", cfg.Path, "reason", st.desc.ReadOnlyReason)
		}
	}
	return e, nil
}

func (e *served) perClient() bool {
	return e.cfg.PerClient() || e.cfg.CopyOnWrite == config.CopyOnWritePersistent && perClientPattern(e.cfg.Overlay)
}

// perClientPattern reports whether p has a %s verb.
func perClientPattern(p string) bool {
	x := config.Export{Path: p}
	return x.PerClient()
}

// current returns the shared storage if it is open, for logs and checks.
func (e *served) current() *storage {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, st := range e.cache {
		return st
	}
	return nil
}

// acquire returns the storage for a client address with a reference the
// caller must release.
func (e *served) acquire(addr netip.Addr) (*storage, error) {
	path, ov := e.cfg.PathFor(addr), e.cfg.OverlayFor(addr)
	key := path + "\x00" + ov
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.retired {
		return nil, fmt.Errorf("%w: export %q was removed from the configuration", nbd.ErrUnavailable, e.cfg.Name)
	}
	if st := e.cache[key]; st != nil {
		if st.fresh() {
			st.refs.Add(1)
			return st, nil
		}
		e.log.Warn("storage vanished or was replaced; reopening", "path", st.path)
		delete(e.cache, key)
		st.release()
	}
	st, err := openStorage(&e.cfg, path, ov)
	if err != nil {
		return nil, err
	}
	st.refs.Store(2) // the cache's and the caller's
	e.cache[key] = st
	return st, nil
}

// put releases a connection's reference; per-client storage closes with its
// client's last connection.
func (e *served) put(st *storage) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.perClient() && st.refs.Load() == 2 {
		for k, v := range e.cache {
			if v == st {
				delete(e.cache, k)
				st.release()
			}
		}
	}
	st.release()
}

// retire stops new connections; storage closes when its last connection
// does.
func (e *served) retire() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.retired = true
	for k, st := range e.cache {
		delete(e.cache, k)
		st.release()
	}
}

// openStorage opens what an export serves: the file or device (or the
// multifile set), the slice of it, and a persistent overlay over it.
func openStorage(cfg *config.Export, path, overlay string) (*storage, error) {
	opts := backend.Options{ReadOnly: cfg.ReadOnly || cfg.CopyOnWrite != "", AllowInUse: cfg.AllowInUse}
	if cfg.Offset == 0 {
		opts.Size = cfg.Size
	}
	st := &storage{path: path}
	if cfg.Multifile {
		st.path = path + ".0"
	}
	fi, err := os.Stat(st.path)
	if err != nil {
		return nil, fmt.Errorf("export %q: %w", cfg.Name, err)
	}
	st.fi = fi
	var b backend.Backend
	if cfg.Multifile {
		b, err = backend.OpenMultifile(path, opts)
		st.desc = backend.Description{Path: path, ResolvedPath: path}
	} else {
		var f *backend.File
		if f, err = backend.Open(path, opts); err == nil {
			b, st.desc = f, f.Describe()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("export %q: %w", cfg.Name, err)
	}
	if cfg.Offset > 0 {
		s, err := backend.NewSlice(b, cfg.Offset, cfg.Size)
		if err != nil {
			b.Close()
			return nil, fmt.Errorf("export %q: %w", cfg.Name, err)
		}
		b = s
	}
	if cfg.CopyOnWrite == config.CopyOnWritePersistent {
		o, err := backend.NewOverlay(b, overlay, true)
		if err != nil {
			b.Close()
			return nil, fmt.Errorf("export %q: overlay: %w", cfg.Name, err)
		}
		b = o
	}
	st.b = b
	st.desc.Size = b.Size()
	if cfg.CopyOnWrite != "" {
		// The base is opened read-only on purpose; the export is not.
		st.desc.ReadOnly, st.desc.ReadOnlyReason = b.Info().ReadOnly, ""
	}
	return st, nil
}

// open is the export's nbd.Export.Open: it counts the connection against
// the export's limit and returns storage whose Close releases it.
func (e *served) open(remote net.Addr) (backend.Backend, error) {
	n := int(e.conns.Add(1))
	if limit := e.cfg.MaxConnections; limit > 0 && n > limit {
		e.conns.Add(-1)
		return nil, fmt.Errorf("%w: export %q already has its maximum of %d connections",
			nbd.ErrNotAllowed, e.cfg.Name, limit)
	}
	st, err := e.acquire(addrOf(remote))
	if err != nil {
		e.conns.Add(-1)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %v", nbd.ErrUnavailable, err)
		}
		return nil, err
	}
	cs := &connStorage{Backend: st.b, release: func() {
		e.put(st)
		e.conns.Add(-1)
	}}
	if e.cfg.CopyOnWrite == config.CopyOnWriteConnection {
		// A private overlay for this connection, discarded at its end.
		o, err := backend.NewOverlay(noClose{st.b}, "", false)
		if err != nil {
			cs.Close()
			return nil, fmt.Errorf("export %q: overlay: %w", e.cfg.Name, err)
		}
		cs.Backend, cs.overlay = o, o
	}
	return cs, nil
}

// connStorage is one connection's handle on an export's storage.
type connStorage struct {
	backend.Backend
	overlay backend.Backend // a per-connection overlay to close, if any
	once    sync.Once
	release func()
}

// WriteAtFUA keeps the storage's own forced-unit-access write visible
// through the wrapper.
func (c *connStorage) WriteAtFUA(p []byte, off int64) (int, error) {
	return backend.WriteAtFUA(c.Backend, p, off)
}

// ReadAtCached keeps the storage's cheaper read from memory visible
// through the wrapper.
func (c *connStorage) ReadAtCached(p []byte, off int64) (int, error) {
	return backend.ReadAtCached(c.Backend, p, off)
}

// WriteAtCached keeps the storage's cheaper write into memory visible
// through the wrapper.
func (c *connStorage) WriteAtCached(p []byte, off int64) (int, error) {
	return backend.WriteAtCached(c.Backend, p, off)
}

// ReadToPipe keeps the storage's reads into a pipe visible through the
// wrapper.
func (c *connStorage) ReadToPipe(pipeFD int, off int64, length int, cached bool) (int, error) {
	return backend.ReadToPipe(c.Backend, pipeFD, off, length, cached)
}

func (c *connStorage) Close() error {
	var err error
	c.once.Do(func() {
		if c.overlay != nil {
			err = c.overlay.Close()
		}
		c.release()
	})
	return err
}

// noClose shares a backend with a wrapper that would close it.
type noClose struct{ backend.Backend }

func (noClose) Close() error { return nil }

// ReadToPipe keeps the storage's reads into a pipe visible to the overlay
// over it.
func (n noClose) ReadToPipe(pipeFD int, off int64, length int, cached bool) (int, error) {
	return backend.ReadToPipe(n.Backend, pipeFD, off, length, cached)
}
