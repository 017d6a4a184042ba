package nbd

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"boardnbd/nbd/backend"
)

// pipeFile is an image file whose reads into a pipe are counted, and can
// be made to fail or to say they are not supported.
type pipeFile struct {
	*backend.File
	mu          sync.Mutex
	calls       int // ReadToPipe calls
	piped       int // bytes they moved
	failAfter   int // >= 0: the next call moves at most this many bytes, then fails
	unsupported bool
	panics      bool // the next call moves what it can, then panics
}

func (p *pipeFile) ReadToPipe(fd int, off int64, n int, cached bool) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	if p.unsupported {
		return 0, fmt.Errorf("test: %w", backend.ErrNotSupported)
	}
	fail := p.failAfter >= 0
	if fail {
		n = min(n, p.failAfter)
		p.failAfter = -1
	}
	k, err := p.File.ReadToPipe(fd, off, n, cached)
	p.piped += k
	if p.panics {
		p.panics = false
		panic("test: storage bug")
	}
	if fail && err == nil {
		err = errInjected
	}
	return k, err
}

func (p *pipeFile) Close() error { return nil } // shared by the test's connections

func (p *pipeFile) counts() (calls, piped int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls, p.piped
}

// splicedExport serves an image of size random bytes as export "img".
func splicedExport(t *testing.T, network string, size int) (string, *pipeFile, []byte) {
	t.Helper()
	data := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{1})
	rng.Read(data)
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := backend.Open(path, backend.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pf := &pipeFile{File: f, failAfter: -1}
	t.Cleanup(func() { f.Close() })
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "sock")
	}
	exp := &Export{Name: "img", Open: func(net.Addr) (backend.Backend, error) { return pf, nil }}
	return startServerOn(t, network, addr, &Server{}, exp), pf, data
}

// readReply reads the reply to a read of n bytes, simple or structured,
// and returns its handle, its error (0 for none) and its data.
func (tc *tclient) readReply(structured bool, lengths map[uint64]uint32) (uint64, uint32, []byte) {
	tc.t.Helper()
	if !structured {
		errno, h := tc.simple()
		if errno != 0 {
			return h, errno, nil
		}
		b := make([]byte, lengths[h])
		tc.read(b)
		return h, 0, b
	}
	cks := tc.chunks()
	var data []byte
	for _, ck := range cks {
		switch ck.typ {
		case replyTypeOffsetData:
			data = append(data, ck.payload[8:]...)
		case replyTypeError:
			return ck.handle, binary.BigEndian.Uint32(ck.payload), nil
		default:
			tc.t.Fatalf("reply chunk of type %d", ck.typ)
		}
	}
	return cks[0].handle, 0, data
}

// TestSplicedReads checks the data of large reads sent from a pipe, among
// small ones in the same batch of replies: reads at odd offsets, one that
// fills the pipe, and ones whose rest goes through the buffer.
func TestSplicedReads(t *testing.T) {
	const size = 8 << 20
	reads := []struct{ off, n uint32 }{
		{0, 4096},
		{4097, spliceMin},           // the smallest spliced, unaligned: the rest through the buffer
		{1 << 20, 256 << 10},        // a copy's request
		{2 << 20, pipeSize},         // fills the pipe
		{3<<20 + 512, 3 << 20},      // the rest through the buffer
		{123, spliceMin - 1},        // not spliced
		{size - pipeSize, pipeSize}, // to the end
		{4096, 4096},
	}
	for _, network := range []string{"tcp", "unix"} {
		for _, structured := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s structured=%v", network, structured), func(t *testing.T) {
				addr, pf, data := splicedExport(t, network, size)
				tc := dialOn(t, network, addr)
				tc.u32(flagCFixedNewstyle | flagCNoZeroes)
				tc.goExport("img", structured)
				lengths := map[uint64]uint32{}
				var least, most int    // a pipe made for the read, or a larger one
				for round := range 2 { // the second reuses the pipes
					for i, r := range reads {
						h := uint64(round*len(reads) + i)
						lengths[h] = r.n
						var flags uint16
						if structured {
							flags = cmdFlagDF // one data chunk, as splicing needs
						}
						tc.request(flags, cmdRead, h, uint64(r.off), r.n, nil)
						if r.n >= spliceMin {
							// A pipe holds its size's worth of pages.
							skip := int(r.off) % os.Getpagesize()
							least += min(int(r.n), pipeSizeFor(int(r.n))-skip)
							most += min(int(r.n), pipeSize-skip)
						}
					}
					for range reads {
						h, errno, got := tc.readReply(structured, lengths)
						r := reads[h%uint64(len(reads))]
						if errno != 0 {
							t.Fatalf("read %d at %d: error %d", r.n, r.off, errno)
						}
						if !bytes.Equal(got, data[r.off:r.off+r.n]) {
							t.Fatalf("read %d at %d: the data differs from the image", r.n, r.off)
						}
					}
				}
				if _, piped := pf.counts(); piped < least || piped > most {
					t.Errorf("bytes spliced = %d, want %d to %d", piped, least, most)
				}
			})
		}
	}
}

// TestSplicedReadError checks that a storage error while filling the pipe
// is an error reply, and that the pipe, holding part of the data, is not
// used again.
func TestSplicedReadError(t *testing.T) {
	const size = 4 << 20
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			addr, pf, data := splicedExport(t, "tcp", size)
			tc := dialFixed(t, addr)
			tc.goExport("img", structured)
			lengths := map[uint64]uint32{1: 256 << 10, 2: 256 << 10}
			pf.mu.Lock()
			pf.failAfter = 100 << 10
			pf.mu.Unlock()
			var flags uint16
			if structured {
				flags = cmdFlagDF
			}
			tc.request(flags, cmdRead, 1, 0, 256<<10, nil)
			if _, errno, _ := tc.readReply(structured, lengths); errno != errIO {
				t.Fatalf("read that failed halfway: error %d, want EIO (%d)", errno, errIO)
			}
			tc.request(flags, cmdRead, 2, 1<<20, 256<<10, nil)
			_, errno, got := tc.readReply(structured, lengths)
			if errno != 0 || !bytes.Equal(got, data[1<<20:1<<20+256<<10]) {
				t.Fatalf("the read after: error %d, data equal %v", errno, bytes.Equal(got, data[1<<20:1<<20+256<<10]))
			}
		})
	}
}

// TestSpliceNotSupported checks that storage that cannot splice is read as
// before, and not asked again.
func TestSpliceNotSupported(t *testing.T) {
	addr, pf, data := splicedExport(t, "tcp", 2<<20)
	pf.mu.Lock()
	pf.unsupported = true
	pf.mu.Unlock()
	tc := dialFixed(t, addr)
	tc.goExport("img", false)
	lengths := map[uint64]uint32{}
	for i := range 3 {
		lengths[uint64(i)] = 256 << 10
		tc.request(0, cmdRead, uint64(i), uint64(i)<<18, 256<<10, nil)
		h, errno, got := tc.readReply(false, lengths)
		if errno != 0 || !bytes.Equal(got, data[h<<18:h<<18+256<<10]) {
			t.Fatalf("read %d: error %d, data equal %v", i, errno, bytes.Equal(got, data[h<<18:h<<18+256<<10]))
		}
	}
	if calls, _ := pf.counts(); calls != 1 {
		t.Errorf("ReadToPipe calls = %d, want 1", calls)
	}
}

// TestPipeBudget checks that pipes are made within pipeBudget, grown to the
// reads that need more, and given back to it when closed.
func TestPipeBudget(t *testing.T) {
	start := pipeBytes.Load()
	if got := pipeSizeFor(1); got != spliceMin {
		t.Errorf("pipeSizeFor(1) = %d, want spliceMin", got)
	}
	if got := pipeSizeFor(spliceMin + 1); got != 2*spliceMin {
		t.Errorf("pipeSizeFor(spliceMin+1) = %d, want %d", got, 2*spliceMin)
	}
	if got := pipeSizeFor(8 << 20); got != pipeSize {
		t.Errorf("pipeSizeFor(8 MiB) = %d, want pipeSize", got)
	}

	var pp pipePool
	p := pp.get(spliceMin)
	if p == nil || p.size != spliceMin {
		t.Fatalf("get(spliceMin) = %+v, want a pipe of spliceMin bytes", p)
	}
	pp.put(p, true)
	if q := pp.get(pipeSize); q != p || p.size != pipeSize {
		t.Fatalf("get(pipeSize) after put = %+v, want the same pipe grown to pipeSize", q)
	}
	var pipes []*pipe
	for {
		q := newPipe(pipeSize)
		if q == nil {
			break
		}
		pipes = append(pipes, q)
		if len(pipes) > pipeBudget/pipeSize {
			t.Fatalf("%d pipes of pipeSize made, more than pipeBudget holds", len(pipes))
		}
	}
	if used := pipeBytes.Load(); used > pipeBudget || used <= pipeBudget-pipeSize {
		t.Errorf("pipe bytes when no more can be made = %d, want within a pipe of pipeBudget", used)
	}
	if q := pp.get(pipeSize); q != nil {
		t.Errorf("get with the budget spent = %+v, want nil", q)
	}
	pp.put(p, true)
	pp.closeAll()
	for _, q := range pipes {
		q.close()
	}
	if got := pipeBytes.Load(); got != start {
		t.Errorf("pipe bytes after closing = %d, want %d as before", got, start)
	}
}

// TestSplicePanicClosesPipes checks that a request that panics while its
// pipe holds data closes only its connection, and that the pipe is closed
// with it, giving its share of pipeBudget back, and its storage call stops
// counting as in progress; the server goes on serving.
func TestSplicePanicClosesPipes(t *testing.T) {
	start, busy := pipeBytes.Load(), storageBusy.Load()
	addr, pf, data := splicedExport(t, "tcp", 2<<20)
	srv, _ := testServers.Load(addr)
	pf.mu.Lock()
	pf.panics = true
	pf.mu.Unlock()
	tc := dialFixed(t, addr)
	tc.goExport("img", false)
	tc.request(0, cmdRead, 1, 0, spliceMin, nil)
	tc.closed()
	waitServedNone(t, srv.(*Server), "spliced read")
	if got := pipeBytes.Load(); got != start {
		t.Errorf("pipe bytes after the connection ended = %d, want %d as before", got, start)
	}
	if got := storageBusy.Load(); got != busy {
		t.Errorf("storage calls in progress after the connection ended = %d, want %d as before", got, busy)
	}

	tc = dialFixed(t, addr)
	tc.goExport("img", false)
	tc.request(0, cmdRead, 2, spliceMin, spliceMin, nil)
	_, errno, got := tc.readReply(false, map[uint64]uint32{2: spliceMin})
	if errno != 0 || !bytes.Equal(got, data[spliceMin:2*spliceMin]) {
		t.Fatalf("read on a new connection: error %d, data equal %v", errno, bytes.Equal(got, data[spliceMin:2*spliceMin]))
	}
	if calls, _ := pf.counts(); calls != 2 {
		t.Errorf("ReadToPipe calls = %d, want 2", calls)
	}
}

// TestSplicedReadsAtDepthOne reads one large block at a time, as a kernel
// client reading ahead does: after calmWaits such reads the reader sleeps
// in read(2) on a blocking socket, and the replies are spliced into it
// with a system call the runtime sees.
func TestSplicedReadsAtDepthOne(t *testing.T) {
	const n = spliceMin
	addr, pf, data := splicedExport(t, "tcp", 4<<20)
	tc := dialFixed(t, addr)
	tc.goExport("img", false)
	lengths := map[uint64]uint32{}
	reads := 3 * calmWaits
	for i := range reads {
		off := uint64(i*n) % uint64(len(data))
		lengths[uint64(i)] = n
		tc.request(0, cmdRead, uint64(i), off, n, nil)
		h, errno, got := tc.readReply(false, lengths)
		if h != uint64(i) || errno != 0 || !bytes.Equal(got, data[off:off+n]) {
			t.Fatalf("read %d: handle %d, error %d, data equal %v", i, h, errno, bytes.Equal(got, data[off:off+n]))
		}
	}
	if _, piped := pf.counts(); piped != reads*n {
		t.Errorf("bytes spliced = %d, want %d", piped, reads*n)
	}
}
