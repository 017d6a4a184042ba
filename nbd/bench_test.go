package nbd

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

func BenchmarkDecodeRequest(b *testing.B) {
	var h [requestLen]byte
	encodeRequest(&h, request{flags: cmdFlagFUA, typ: cmdWrite, handle: 42, offset: 1 << 30, length: 4096})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeRequest(&h); err != nil {
			b.Fatal(err)
		}
	}
}

// rawConn is an allocation-free client for measuring the server: fixed
// buffers, pipelined requests, replies matched by count.
type rawConn struct {
	c   net.Conn
	br  *bufio.Reader
	req [requestLen]byte
	hdr [simpleReplyLen]byte
	buf []byte
}

func newRawConn(tb testing.TB, addr string, size int) *rawConn {
	tc := dialFixed(tb, addr)
	tc.goExport("disk", false)
	tc.c.SetDeadline(timeZero)
	return &rawConn{c: tc.c, br: tc.br, buf: make([]byte, size)}
}

// batch sends depth requests of the given type and reads their replies.
func (r *rawConn) batch(tb testing.TB, typ uint16, size uint32, depth int) {
	for i := range depth {
		encodeRequest(&r.req, request{typ: typ, handle: uint64(i), offset: uint64(i) * uint64(size), length: size})
		if _, err := r.c.Write(r.req[:]); err != nil {
			tb.Fatal(err)
		}
		if typ == cmdWrite {
			if _, err := r.c.Write(r.buf[:size]); err != nil {
				tb.Fatal(err)
			}
		}
	}
	for range depth {
		if _, err := io.ReadFull(r.br, r.hdr[:]); err != nil {
			tb.Fatal(err)
		}
		if e := binary.BigEndian.Uint32(r.hdr[4:]); e != 0 {
			tb.Fatalf("error %d", e)
		}
		if typ == cmdRead {
			if _, err := io.ReadFull(r.br, r.buf[:size]); err != nil {
				tb.Fatal(err)
			}
		}
	}
}

func benchIO(b *testing.B, typ uint16, size uint32, depth int) {
	disk := newMem(64 << 20)
	addr := startServer(b, &Server{}, memExport("disk", disk))
	r := newRawConn(b, addr, int(size))
	r.batch(b, typ, size, depth) // warm the pools
	b.SetBytes(int64(size) * int64(depth))
	b.ReportAllocs()
	for b.Loop() {
		r.batch(b, typ, size, depth)
	}
}

func BenchmarkRead4KDepth1(b *testing.B)   { benchIO(b, cmdRead, 4096, 1) }
func BenchmarkRead4KDepth32(b *testing.B)  { benchIO(b, cmdRead, 4096, 32) }
func BenchmarkWrite4KDepth32(b *testing.B) { benchIO(b, cmdWrite, 4096, 32) }
func BenchmarkRead1MDepth8(b *testing.B)   { benchIO(b, cmdRead, 1<<20, 8) }
func BenchmarkWrite1MDepth8(b *testing.B)  { benchIO(b, cmdWrite, 1<<20, 8) }

// TestHotPathAllocations checks that serving a request allocates nothing
// once the pools are warm: client and server share this process, and the
// client allocates nothing either.
func TestHotPathAllocations(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("measures allocations; meaningless under -race, where sync.Pool drops items")
	}
	disk := newMem(8 << 20)
	addr := startServer(t, &Server{}, memExport("disk", disk))
	for _, tc := range []struct {
		name string
		typ  uint16
	}{{"read", cmdRead}, {"write", cmdWrite}} {
		r := newRawConn(t, addr, 4096)
		for range 10 {
			r.batch(t, tc.typ, 4096, 32)
		}
		// Depth 1 as well: there each request is a read of the socket.
		for _, depth := range []int{32, 1} {
			allocs := testing.AllocsPerRun(50, func() { r.batch(t, tc.typ, 4096, depth) })
			// A stray allocation now and then (a goroutine's stack growing,
			// the runtime's own timers) is not per request.
			if perReq := allocs / float64(depth); perReq > 0.1 {
				t.Errorf("%s at depth %d: %.2f allocations per request, want none", tc.name, depth, perReq)
			}
		}
	}
}

var timeZero time.Time
