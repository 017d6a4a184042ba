package nbd

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestBadInputs is the table of malformed handshakes and requests: each
// gets the expected reply or disconnect, and the server serves another
// client afterwards.
func TestBadInputs(t *testing.T) {
	addr, _, _ := twoExports(t)
	hugeName := strings.Repeat("x", maxStringLen+1)
	tests := []struct {
		name string
		run  func(tc *tclient)
	}{
		{"truncated client flags", func(tc *tclient) {
			tc.write([]byte{0, 0})
			tc.c.(*net.TCPConn).CloseWrite()
			tc.closed()
		}},
		{"truncated option header", func(tc *tclient) {
			tc.u32(flagCFixedNewstyle)
			tc.write(binary.BigEndian.AppendUint64(nil, magicOpt)[:6])
			tc.c.(*net.TCPConn).CloseWrite()
			tc.closed()
		}},
		{"option data shorter than its length", func(tc *tclient) {
			tc.u32(flagCFixedNewstyle)
			b := binary.BigEndian.AppendUint64(nil, magicOpt)
			b = binary.BigEndian.AppendUint32(b, optGo)
			b = binary.BigEndian.AppendUint32(b, 100)
			tc.write(append(b, 1, 2, 3))
			tc.c.(*net.TCPConn).CloseWrite()
			tc.closed()
		}},
		{"EXPORT_NAME longer than 4096 bytes", func(tc *tclient) {
			tc.u32(flagCFixedNewstyle)
			tc.opt(optExportName, []byte(hugeName))
			tc.closed()
		}},
		{"GO with a name longer than 4096 bytes", func(tc *tclient) {
			tc.u32(flagCFixedNewstyle)
			tc.opt(optGo, exportReq(hugeName))
			if rs := tc.replies(optGo); rs[len(rs)-1].typ != repErrInvalid {
				t.Errorf("GO huge name = %#x, want INVALID", rs[len(rs)-1].typ)
			}
		}},
		{"GO with more info requests than data", func(tc *tclient) {
			tc.u32(flagCFixedNewstyle)
			tc.opt(optGo, []byte{0, 0, 0, 4, 'd', 'i', 's', 'k', 0xff, 0xff, 0, 1})
			if rs := tc.replies(optGo); rs[len(rs)-1].typ != repErrInvalid {
				t.Errorf("GO with 65535 info requests = %#x, want INVALID", rs[len(rs)-1].typ)
			}
		}},
		{"meta context with a huge query count", func(tc *tclient) {
			tc.u32(flagCFixedNewstyle)
			tc.opt(optStructuredReply, nil)
			tc.replies(optStructuredReply)
			tc.opt(optListMetaContext, []byte{0, 0, 0, 4, 'd', 'i', 's', 'k', 0x7f, 0xff, 0xff, 0xff})
			if rs := tc.replies(optListMetaContext); rs[len(rs)-1].typ != repErrInvalid {
				t.Errorf("LIST_META_CONTEXT with 2^31 queries = %#x, want INVALID", rs[len(rs)-1].typ)
			}
		}},
		{"request before GO", func(tc *tclient) {
			tc.u32(flagCFixedNewstyle)
			tc.request(0, cmdRead, 1, 0, 512, nil) // not IHAVEOPT
			tc.closed()
		}},
		{"option after GO", func(tc *tclient) {
			tc.u32(flagCFixedNewstyle)
			tc.goExport("disk", false)
			// 28 bytes shaped as an option: a bad request magic.
			tc.opt(optList, make([]byte, requestLen-optHeaderLen))
			tc.closed()
		}},
		{"truncated request header", func(tc *tclient) {
			tc.u32(flagCFixedNewstyle)
			tc.goExport("disk", false)
			tc.write([]byte{0x25, 0x60, 0x95, 0x13, 0, 0})
			tc.c.(*net.TCPConn).CloseWrite()
			tc.closed()
		}},
		{"client vanishes mid-write", func(tc *tclient) {
			tc.u32(flagCFixedNewstyle)
			tc.goExport("disk", false)
			tc.request(0, cmdWrite, 1, 0, 1<<20, make([]byte, 4096))
			tc.c.Close()
		}},
		{"unknown command with huge length", func(tc *tclient) {
			tc.u32(flagCFixedNewstyle)
			tc.goExport("disk", false)
			tc.request(0, 200, 1, 0, 1<<31, nil)
			if e, _ := tc.simple(); e != errInval {
				t.Errorf("unknown command = %d, want EINVAL", e)
			}
		}},
		{"every unknown flag bit", func(tc *tclient) {
			tc.u32(flagCFixedNewstyle)
			tc.goExport("disk", false)
			for bit := 5; bit < 16; bit++ {
				tc.request(1<<bit, cmdRead, uint64(bit), 0, 512, nil)
				if e, _ := tc.simple(); e != errInval {
					t.Errorf("flag bit %d = %d, want EINVAL", bit, e)
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tc := dial(t, addr)
			tc.t = t
			tt.run(tc)
			other := dialFixed(t, addr)
			if size, _ := other.goExport("disk", false); size != testSize {
				t.Errorf("after %q: another client's GO size = %d", tt.name, size)
			}
		})
	}
}

func TestHandshakeTimeout(t *testing.T) {
	addr := startServer(t, &Server{HandshakeTimeout: 100 * time.Millisecond}, memExport("disk", newMem(testSize)))
	tc := dial(t, addr) // and then say nothing
	start := time.Now()
	tc.closed()
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("a silent client held its slot for %v", d)
	}
}

func TestStorageErrorsKeepTheConnection(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want uint32
	}{
		{syscall.EIO, errIO},
		{syscall.ENOSPC, errNoSpc},
		{syscall.EDQUOT, errNoSpc},
		{syscall.EROFS, errPerm},
		{syscall.ENXIO, errIO}, // a device that went away
	} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			disk := newMem(testSize)
			disk.failAt, disk.failErr = 4096, tc.err
			addr := startServer(t, &Server{}, memExport("disk", disk))
			for _, structured := range []bool{false, true} {
				c := dialFixed(t, addr)
				c.goExport("disk", structured)
				c.request(0, cmdWrite, 1, 4096, 512, make([]byte, 512))
				var e uint32
				if structured {
					ck := c.chunk()
					if ck.typ != replyTypeError || ck.flags&replyFlagDone == 0 {
						t.Fatalf("structured WRITE failure: chunk type %d flags %d", ck.typ, ck.flags)
					}
					e = binary.BigEndian.Uint32(ck.payload)
				} else {
					e, _ = c.simple()
				}
				if e != tc.want {
					t.Errorf("WRITE at the failing offset (structured=%v) = %d, want %d", structured, e, tc.want)
				}
				c.request(0, cmdWrite, 2, 0, 512, make([]byte, 512))
				if e, _ := c.simple(); e != 0 {
					t.Errorf("WRITE elsewhere after the failure = %d", e)
				}
			}
		})
	}
}

// TestManyConnectionsVerifiedIO runs 500 connections at once, each writing
// its own pattern to its own range and reading it back.
func TestManyConnectionsVerifiedIO(t *testing.T) {
	if testing.Short() {
		t.Skip("500 connections")
	}
	const conns, block = 500, 4096
	disk := newMem(conns * 4 * block)
	addr := startServer(t, &Server{}, memExport("disk", disk))
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		wg.Go(func() {
			if err := verifiedIO(addr, i, block); err != nil {
				errs <- fmt.Errorf("connection %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// verifiedIO writes four random blocks at connection i's range, pipelined,
// and reads them back. It uses no testing.T, so it can run in goroutines.
func verifiedIO(addr string, i, block int) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%v", p)
		}
	}()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	tc := &tclient{t: panicTB{}, c: c, br: bufioReader(c)}
	var g [18]byte
	tc.read(g[:])
	tc.u32(flagCFixedNewstyle | flagCNoZeroes)
	tc.goExport("disk", false)
	rng := rand.New(rand.NewPCG(uint64(i), 7))
	data := make([]byte, 4*block)
	for j := range data {
		data[j] = byte(rng.Uint32())
	}
	base := uint64(i * 4 * block)
	for j := range 4 {
		tc.request(0, cmdWrite, uint64(j), base+uint64(j*block), uint32(block), data[j*block:(j+1)*block])
	}
	for range 4 {
		if e, _ := tc.simple(); e != 0 {
			return fmt.Errorf("WRITE error %d", e)
		}
	}
	tc.request(0, cmdRead, 9, base, uint32(4*block), nil)
	if e, _ := tc.simple(); e != 0 {
		return fmt.Errorf("READ error %d", e)
	}
	got := make([]byte, 4*block)
	tc.read(got)
	if !bytes.Equal(got, data) {
		return fmt.Errorf("read back differs from what was written")
	}
	tc.request(0, cmdDisc, 10, 0, 0, nil)
	return nil
}

// panicTB lets the test client run outside the test goroutine: failures
// panic, and verifiedIO's caller sees the connection fail.
type panicTB struct{ testing.TB }

func (panicTB) Helper() {}
func (panicTB) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf(format, args...))
}
func (panicTB) Errorf(format string, args ...any) {
	panic(fmt.Sprintf(format, args...))
}
