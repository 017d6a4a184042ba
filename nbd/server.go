// Package nbd speaks the Network Block Device protocol as a server: the
// fixed newstyle handshake with its options, and the transmission phase with
// simple and structured replies.
//
// It owns the wire format (wire.go, pure code over bytes), the option
// haggling (handshake.go), the per-connection request loop (conn.go) and the
// Server that accepts and tracks connections (this file). It knows nothing of
// YAML, mDNS, or what a block device is: storage comes from the Backend an
// Export opens, and the set of exports from an Exports value that the
// appliance supplies.
package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"boardnbd/nbd/backend"
)

// Defaults for the Server's limits.
const (
	DefaultHandshakeTimeout = 30 * time.Second
	DefaultMaxInFlight      = 32
	DefaultMaxPayload       = 32 << 20
	// shutdownGrace is how long a connection keeps answering ESHUTDOWN
	// (or NBD_REP_ERR_SHUTDOWN) after Shutdown, so that a client can hear
	// why and disconnect softly, before the server hangs up.
	shutdownGrace = time.Second
)

var (
	// ErrServerClosed is returned by Serve after Shutdown or Close.
	ErrServerClosed = errors.New("nbd: server closed")
	// ErrUnknownExport is returned by Exports.Lookup for a name it does
	// not serve to that client.
	ErrUnknownExport = errors.New("nbd: unknown export")
	// ErrUnavailable is returned by Exports.Lookup or Export.Open for an
	// export that is known but cannot be served now (device absent).
	ErrUnavailable = errors.New("nbd: export not available")
	// ErrNotAllowed is returned by Exports.Lookup or Export.Open when
	// policy refuses the client (allow list, connection limit).
	ErrNotAllowed = errors.New("nbd: not allowed")
)

// Export is one export as the protocol sees it. The zero value of the
// switches means "on": an Export advertises flush, FUA and trim unless told
// not to.
type Export struct {
	Name        string
	Description string
	ReadOnly    bool // serve read-only whatever the backend allows

	NoFlush     bool // do not advertise NBD_CMD_FLUSH
	NoFUA       bool // do not advertise NBD_CMD_FLAG_FUA
	NoTrim      bool // do not advertise NBD_CMD_TRIM
	NoMultiConn bool // never advertise NBD_FLAG_CAN_MULTI_CONN

	// TLSOnly hides the export from clients that have not started TLS:
	// LIST omits it, INFO and GO answer NBD_REP_ERR_TLS_REQD.
	TLSOnly bool

	// IdleTimeout closes a connection that sends no request for this long
	// while none is in flight. Zero means never.
	IdleTimeout time.Duration

	// Open returns the storage for one connection from remote. It is
	// called for NBD_OPT_INFO (and closed right after), and for
	// NBD_OPT_GO / NBD_OPT_EXPORT_NAME (closed at disconnect).
	Open func(remote net.Addr) (backend.Backend, error)
}

// Exports is the set of exports a Server offers. Resolution is a function of
// the export name and the client's address, so that allow lists and
// per-client paths live in one place, outside the protocol.
type Exports interface {
	// Lookup finds the export a client asked for by name. The empty name
	// asks for the default export, if there is one. It returns an error
	// wrapping ErrUnknownExport, ErrUnavailable or ErrNotAllowed.
	Lookup(name string, remote net.Addr) (*Export, error)
	// List returns the exports remote may see, in a stable order.
	List(remote net.Addr) []*Export
}

// ExportList is an Exports over a fixed slice. The empty name resolves to
// the only export when there is exactly one.
type ExportList []*Export

// Lookup implements Exports.
func (l ExportList) Lookup(name string, _ net.Addr) (*Export, error) {
	if name == "" && len(l) == 1 {
		return l[0], nil
	}
	for _, e := range l {
		if e.Name == name {
			return e, nil
		}
	}
	return nil, ErrUnknownExport
}

// List implements Exports.
func (l ExportList) List(net.Addr) []*Export { return l }

// Server serves NBD clients. Set its fields before the first Serve; they
// must not change afterwards.
type Server struct {
	Exports Exports
	// Logger receives one line per connection opened and closed, and
	// errors. Nil discards.
	Logger *slog.Logger

	HandshakeTimeout time.Duration // 0 means DefaultHandshakeTimeout
	MaxInFlight      int           // requests per connection; 0 means DefaultMaxInFlight
	MaxPayload       uint32        // largest WRITE payload and READ length; 0 means DefaultMaxPayload
	MaxConnections   int           // server-wide; 0 means no limit

	// TLSConfig enables NBD_OPT_STARTTLS (TLS 1.2 at least). Nil means the
	// server runs without TLS and answers STARTTLS with a policy error.
	TLSConfig *tls.Config
	// RequireTLS makes the server insist on TLS for everything (the spec's
	// FORCEDTLS): before STARTTLS, every option but STARTTLS and ABORT is
	// answered NBD_REP_ERR_TLS_REQD. Without it, only exports marked
	// TLSOnly need TLS (SELECTIVETLS).
	RequireTLS bool

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	connWG    sync.WaitGroup
	shutting  atomic.Bool
	// closeAt is the deadline (unix nanoseconds) by which connections stop
	// reading after Shutdown.
	closeAt atomic.Int64

	trimming  bool          // a trimmer runs; under mu
	trimEvery time.Duration // 0 means trimInterval; tests shorten it
}

// trimInterval is how often idle connections give up their parked workers.
const trimInterval = 2 * time.Second

// trim asks idle connections to let their parked workers go, so that an
// idle connection holds no goroutine but its reader. It runs while the
// server has connections; newConn starts it, under mu.
func (s *Server) trim() {
	every := s.trimEvery
	if every == 0 {
		every = trimInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for range t.C {
		s.mu.Lock()
		if len(s.conns) == 0 {
			s.trimming = false
			s.mu.Unlock()
			return
		}
		for c := range s.conns {
			c.trimIfIdle()
		}
		s.mu.Unlock()
	}
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func (s *Server) handshakeTimeout() time.Duration {
	if s.HandshakeTimeout > 0 {
		return s.HandshakeTimeout
	}
	return DefaultHandshakeTimeout
}

func (s *Server) maxInFlight() int {
	if s.MaxInFlight > 0 {
		return s.MaxInFlight
	}
	return DefaultMaxInFlight
}

func (s *Server) maxPayload() uint32 {
	if s.MaxPayload > 0 {
		return s.MaxPayload
	}
	return DefaultMaxPayload
}

// Serve accepts connections on ln and serves each in its own goroutine. It
// always returns a non-nil error; after Shutdown or Close it returns
// ErrServerClosed. Serve closes ln when it returns.
func (s *Server) Serve(ln net.Listener) error {
	if !s.trackListener(ln, true) {
		ln.Close()
		return ErrServerClosed
	}
	defer s.trackListener(ln, false)
	defer ln.Close()

	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.shutting.Load() {
				return ErrServerClosed
			}
			if isTemporaryAccept(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.logger().Warn("accept failed; retrying", "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		if tc, ok := nc.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
			tc.SetKeepAlive(true)
			tc.SetKeepAlivePeriod(30 * time.Second)
		}
		c, ok := s.newConn(nc)
		if !ok {
			continue
		}
		go c.serve()
	}
}

// isTemporaryAccept reports accept errors worth retrying: running out of
// descriptors or buffers, or a connection aborted before it was accepted.
func isTemporaryAccept(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ECONNABORTED)
}

// ServeConn serves one already connected client (inetd mode, tests) and
// returns when it is gone. nc is closed on return.
func (s *Server) ServeConn(nc net.Conn) {
	c, ok := s.newConn(nc)
	if !ok {
		return
	}
	c.serve()
}

// newConn registers a connection, or refuses it (closing nc) when the server
// is shutting down or full.
func (s *Server) newConn(nc net.Conn) (*conn, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutting.Load() {
		nc.Close()
		return nil, false
	}
	if s.MaxConnections > 0 && len(s.conns) >= s.MaxConnections {
		s.logger().Warn("connection refused: server connection limit reached; raise limits.max_connections",
			"remote", nc.RemoteAddr().String(), "limit", s.MaxConnections)
		nc.Close()
		return nil, false
	}
	if s.conns == nil {
		s.conns = make(map[*conn]struct{})
	}
	c := newConn(s, nc)
	s.conns[c] = struct{}{}
	openConns.Add(1)
	if !s.trimming {
		s.trimming = true
		go s.trim()
	}
	s.connWG.Add(1)
	return c, true
}

func (s *Server) forget(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	openConns.Add(-1)
	s.connWG.Done()
}

func (s *Server) trackListener(ln net.Listener, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.shutting.Load() {
			return false
		}
		if s.listeners == nil {
			s.listeners = make(map[net.Listener]struct{})
		}
		s.listeners[ln] = struct{}{}
	} else {
		delete(s.listeners, ln)
	}
	return true
}

// Connections returns the number of connections being served.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Shutdown stops accepting connections, answers further requests and
// options with ESHUTDOWN / NBD_REP_ERR_SHUTDOWN for a short grace, lets the
// requests in flight finish, and closes every connection. It returns when all
// are closed, or with ctx's error after closing them hard when ctx ends first.
func (s *Server) Shutdown(ctx context.Context) error {
	s.beginShutdown(time.Now().Add(shutdownGrace))
	done := make(chan struct{})
	go func() {
		s.connWG.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.Close()
		<-done
		return ctx.Err()
	}
}

// Close closes the listeners and every connection at once, without waiting
// for requests in flight.
func (s *Server) Close() error {
	s.beginShutdown(time.Now())
	s.mu.Lock()
	for c := range s.conns {
		c.raw.Close()
	}
	s.mu.Unlock()
	return nil
}

func (s *Server) beginShutdown(deadline time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.shutting.Swap(true) || deadline.UnixNano() < s.closeAt.Load() {
		s.closeAt.Store(deadline.UnixNano())
	}
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.raw.SetReadDeadline(deadline)
	}
}

// pipeConn adapts a reader and a writer (stdin and stdout in inetd mode)
// to net.Conn.
type pipeConn struct {
	io.Reader
	io.Writer
	closer func() error
	addr   net.Addr
}

// NewPipeConn returns a net.Conn reading r and writing w, for ServeConn over
// inherited descriptors. close is called once on Close.
func NewPipeConn(r io.Reader, w io.Writer, addr net.Addr, close func() error) net.Conn {
	return &pipeConn{Reader: r, Writer: w, closer: close, addr: addr}
}

func (p *pipeConn) Close() error {
	if p.closer == nil {
		return nil
	}
	f := p.closer
	p.closer = nil
	return f()
}
func (p *pipeConn) LocalAddr() net.Addr                { return p.addr }
func (p *pipeConn) RemoteAddr() net.Addr               { return p.addr }
func (p *pipeConn) SetDeadline(t time.Time) error      { return nil }
func (p *pipeConn) SetReadDeadline(t time.Time) error  { return nil }
func (p *pipeConn) SetWriteDeadline(t time.Time) error { return nil }
