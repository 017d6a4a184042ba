package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// A raw NBD client for tests: it speaks bytes, so tests can send what no
// well-behaved client would.

type tclient struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

// startServer serves exports on a loopback port until the test ends.
func startServer(t testing.TB, s *Server, exports ...*Export) string {
	t.Helper()
	return startServerOn(t, "tcp", "127.0.0.1:0", s, exports...)
}

// startServerOn serves exports on a listener of the given network until the
// test ends, and returns its address.
func startServerOn(t testing.TB, network, addr string, s *Server, exports ...*Export) string {
	t.Helper()
	if s.Exports == nil {
		s.Exports = ExportList(exports)
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	testServers.Store(ln.Addr().String(), s)
	t.Cleanup(func() {
		testServers.Delete(ln.Addr().String())
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown = %v", err)
		}
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve = %v, want ErrServerClosed", err)
		}
	})
	return ln.Addr().String()
}

// testServers maps the address of each server startServerOn runs to the
// server, for streak.
var testServers sync.Map

// streak is the server's streak of fast storage calls on this connection
// (conn.fast). Over a Unix socket, whose client end has no address, the
// server must have only this connection.
func (tc *tclient) streak() int32 {
	tc.t.Helper()
	v, ok := testServers.Load(tc.c.RemoteAddr().String())
	if !ok {
		tc.t.Fatalf("no test server at %v", tc.c.RemoteAddr())
	}
	s := v.(*Server)
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c.raw.RemoteAddr().String() == tc.c.LocalAddr().String() || len(s.conns) == 1 {
			return c.fast.Load()
		}
	}
	tc.t.Fatalf("the server at %v has no connection from %v", tc.c.RemoteAddr(), tc.c.LocalAddr())
	return 0
}

// dial connects and reads the greeting, checking it.
func dial(t testing.TB, addr string) *tclient {
	t.Helper()
	return dialOn(t, "tcp", addr)
}

// dialOn is dial over the given network.
func dialOn(t testing.TB, network, addr string) *tclient {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := &tclient{t: t, c: c, br: bufio.NewReader(c)}
	var g [18]byte
	tc.read(g[:])
	if binary.BigEndian.Uint64(g[0:]) != magicInit || binary.BigEndian.Uint64(g[8:]) != magicOpt {
		t.Fatalf("greeting = %x, want NBDMAGIC IHAVEOPT", g)
	}
	if f := binary.BigEndian.Uint16(g[16:]); f != flagFixedNewstyle|flagNoZeroes {
		t.Fatalf("handshake flags = %#x, want FIXED_NEWSTYLE|NO_ZEROES", f)
	}
	return tc
}

// dialFixed connects as a fixed newstyle client with NO_ZEROES.
func dialFixed(t testing.TB, addr string) *tclient {
	tc := dial(t, addr)
	tc.u32(flagCFixedNewstyle | flagCNoZeroes)
	return tc
}

func (tc *tclient) read(b []byte) {
	tc.t.Helper()
	if _, err := io.ReadFull(tc.br, b); err != nil {
		tc.t.Fatalf("read %d bytes: %v", len(b), err)
	}
}

func (tc *tclient) write(b []byte) {
	tc.t.Helper()
	if _, err := tc.c.Write(b); err != nil {
		tc.t.Fatalf("write: %v", err)
	}
}

func (tc *tclient) u32(v uint32) {
	tc.write(binary.BigEndian.AppendUint32(nil, v))
}

func (tc *tclient) opt(opt uint32, data []byte) {
	tc.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	tc.write(append(b, data...))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (tc *tclient) reply() optReply {
	tc.t.Helper()
	var h [optReplyHeaderLen]byte
	tc.read(h[:])
	if m := binary.BigEndian.Uint64(h[:]); m != magicOptReply {
		tc.t.Fatalf("option reply magic = %#x", m)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	r.data = make([]byte, binary.BigEndian.Uint32(h[16:]))
	tc.read(r.data)
	return r
}

// replies reads replies to opt until a final one (ACK or an error).
func (tc *tclient) replies(opt uint32) []optReply {
	tc.t.Helper()
	var rs []optReply
	for {
		r := tc.reply()
		if r.opt != opt {
			tc.t.Fatalf("reply for option %d, want %d", r.opt, opt)
		}
		rs = append(rs, r)
		if r.typ == repAck || r.typ&(1<<31) != 0 {
			return rs
		}
	}
}

func exportReq(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

func metaReq(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// goExport enters transmission with NBD_OPT_GO, optionally negotiating
// structured replies and base:allocation first. It returns the size and
// transmission flags.
func (tc *tclient) goExport(name string, structured bool, infos ...uint16) (uint64, uint16) {
	tc.t.Helper()
	if structured {
		tc.opt(optStructuredReply, nil)
		if r := tc.reply(); r.typ != repAck {
			tc.t.Fatalf("STRUCTURED_REPLY reply = %#x", r.typ)
		}
		tc.opt(optSetMetaContext, metaReq(name, "base:allocation"))
		if rs := tc.replies(optSetMetaContext); len(rs) != 2 {
			tc.t.Fatalf("SET_META_CONTEXT replies = %v", rs)
		}
	}
	tc.opt(optGo, exportReq(name, infos...))
	var size uint64
	var flags uint16
	for _, r := range tc.replies(optGo) {
		switch {
		case r.typ == repInfo && binary.BigEndian.Uint16(r.data) == infoExport:
			size, flags = binary.BigEndian.Uint64(r.data[2:]), binary.BigEndian.Uint16(r.data[10:])
		case r.typ&(1<<31) != 0:
			tc.t.Fatalf("GO %q failed: %#x %s", name, r.typ, r.data)
		}
	}
	return size, flags
}

func (tc *tclient) request(flags, typ uint16, handle, off uint64, length uint32, payload []byte) {
	tc.t.Helper()
	var h [requestLen]byte
	encodeRequest(&h, request{flags: flags, typ: typ, handle: handle, offset: off, length: length})
	tc.write(append(h[:], payload...))
}

// simple reads a simple reply header.
func (tc *tclient) simple() (errno uint32, handle uint64) {
	tc.t.Helper()
	var h [simpleReplyLen]byte
	tc.read(h[:])
	if m := binary.BigEndian.Uint32(h[:]); m != magicSimple {
		tc.t.Fatalf("simple reply magic = %#x", m)
	}
	return binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
}

type structChunk struct {
	flags, typ uint16
	handle     uint64
	payload    []byte
}

func (tc *tclient) chunk() structChunk {
	tc.t.Helper()
	var h [structReplyLen]byte
	tc.read(h[:])
	if m := binary.BigEndian.Uint32(h[:]); m != magicStructure {
		tc.t.Fatalf("structured reply magic = %#x", m)
	}
	ck := structChunk{
		flags:  binary.BigEndian.Uint16(h[4:]),
		typ:    binary.BigEndian.Uint16(h[6:]),
		handle: binary.BigEndian.Uint64(h[8:]),
	}
	ck.payload = make([]byte, binary.BigEndian.Uint32(h[16:]))
	tc.read(ck.payload)
	return ck
}

// chunks reads a whole structured reply.
func (tc *tclient) chunks() []structChunk {
	tc.t.Helper()
	var cks []structChunk
	for {
		ck := tc.chunk()
		cks = append(cks, ck)
		if ck.flags&replyFlagDone != 0 {
			return cks
		}
	}
}

// closed asserts the server hangs up without sending anything more.
func (tc *tclient) closed() {
	tc.t.Helper()
	tc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	n, err := tc.br.Read(b[:])
	if err == nil || n != 0 {
		tc.t.Fatalf("read after violation = %d, %v; want the connection closed", n, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		tc.t.Fatalf("connection still open after violation")
	}
}

func bufioReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

// waitServedNone waits up to 5 s for s to serve no connection, as after a
// connection was closed for a panic.
func waitServedNone(t testing.TB, s *Server, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.Connections() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the panicked connection is still being served after 5s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
