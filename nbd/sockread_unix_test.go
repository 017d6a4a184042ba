//go:build unix

package nbd

import (
	"bytes"
	"net"
	"runtime"
	"testing"
	"time"

	"boardnbd/nbd/backend"
)

// lengthenHotWait makes a depth-1 reader sleep in read(2) for d, long enough
// to observe, and gives the test n processors.
func lengthenHotWait(t *testing.T, d time.Duration, procs int) {
	old, oldProcs := hotWait, runtime.GOMAXPROCS(procs)
	hotWait = d
	t.Cleanup(func() { hotWait = old; runtime.GOMAXPROCS(oldProcs) })
	if n := blockingConns.Load(); n != 0 {
		t.Fatalf("%d connection(s) left in blocking mode by an earlier test", n)
	}
	if n := openConns.Load(); n != 0 {
		t.Fatalf("%d connection(s) left open by an earlier test", n)
	}
}

// blockingWithin waits up to within for want connections in blocking mode.
func blockingWithin(want int32, within time.Duration) bool {
	for deadline := time.Now().Add(within); blockingConns.Load() != want; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// waitBlocking fails unless want connections are in blocking mode within.
func waitBlocking(t *testing.T, want int32, within time.Duration, why string) {
	t.Helper()
	if !blockingWithin(want, within) {
		t.Fatalf("%s: %d connection(s) in blocking mode after %v, want %d", why, blockingConns.Load(), within, want)
	}
}

// calmDown sends reads at depth 1 until the reader sleeps in read(2). It
// takes calmWaits of them; a storage call slow enough to go to a worker
// (they happen under -race) starts the count again, so it tries a few
// times before it fails.
func (tc *tclient) calmDown(t *testing.T, why string) {
	t.Helper()
	for range 8 {
		for range calmWaits {
			tc.smallRead(1)
		}
		if blockingWithin(1, 50*time.Millisecond) {
			return
		}
	}
	t.Fatalf("%s: %d connection(s) in blocking mode after %d reads at depth 1, want 1", why, blockingConns.Load(), 8*calmWaits)
}

// smallRead reads 512 bytes at offset 0 with handle h, and waits for them.
func (tc *tclient) smallRead(h uint64) {
	tc.t.Helper()
	tc.request(0, cmdRead, h, 0, 512, nil)
	if e, got := tc.simple(); e != 0 || got != h {
		tc.t.Fatalf("read %d = errno %d handle %d", h, e, got)
	}
	var buf [512]byte
	tc.read(buf[:])
}

// fastMemClient lengthens hotWait to wait with two processors, serves one
// in-memory export, and returns its storage and a client in transmission
// whose requests the reader runs itself.
func fastMemClient(t *testing.T, wait time.Duration) (*memBackend, *tclient) {
	t.Helper()
	lengthenHotWait(t, wait, 2)
	mem := newMem(testSize)
	addr := startServer(t, &Server{}, memExport("disk", mem))
	tc := dialFixed(t, addr)
	tc.goExport("disk", false)
	tc.fastStreak(0)
	return mem, tc
}

// testPayload is n bytes that differ with seed.
func testPayload(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*13) ^ seed
	}
	return p
}

// writeHeader is the header of a write of n bytes at off.
func writeHeader(h, off uint64, n int) []byte {
	var b [requestLen]byte
	encodeRequest(&b, request{typ: cmdWrite, handle: h, offset: off, length: uint32(n)})
	return b[:]
}

// stayBlocking checks that the count stays want for d.
func stayBlocking(t *testing.T, want int32, d time.Duration, why string) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if n := blockingConns.Load(); n != want {
			t.Fatalf("%s: %d connection(s) in blocking mode, want %d", why, n, want)
		}
	}
}

func TestDepthOneReaderSleepsInRead(t *testing.T) {
	const wait = 400 * time.Millisecond
	lengthenHotWait(t, wait, 2)
	addr := startServer(t, &Server{}, memExport("disk", newMem(testSize)))
	tc := dialFixed(t, addr)
	tc.goExport("disk", false)
	buf := make([]byte, 512)

	stayBlocking(t, 0, 20*time.Millisecond, "before the first request")
	tc.fastStreak(0) // requests run on the reader: none is running while it waits
	tc.calmDown(t, "at depth 1")

	// Quiet for longer than hotWait: the read times out, the socket goes
	// back to the poller, and the request after the silence is not fast, so
	// the reader does not sleep in read(2) for the next one.
	waitBlocking(t, 0, 2*wait, "after the client went quiet")
	tc.smallRead(3)
	stayBlocking(t, 0, wait/4, "after a request that followed a silence")

	// Two requests in one read: the client is deeper than 1.
	tc.smallRead(4)
	waitBlocking(t, 1, wait/2, "back at depth 1 after one fast request")
	var two [2 * requestLen]byte // in one write, so one read brings both
	encodeRequest((*[requestLen]byte)(two[:]), request{typ: cmdRead, handle: 5, length: 512})
	encodeRequest((*[requestLen]byte)(two[requestLen:]), request{typ: cmdRead, handle: 6, length: 512})
	tc.write(two[:])
	for range 2 {
		if e, _ := tc.simple(); e != 0 {
			t.Fatalf("pipelined read = errno %d", e)
		}
		tc.read(buf)
	}
	waitBlocking(t, 0, wait/4, "after two requests in one read") // not by the timeout
	// A deeper client that is the slower side sends one request per reply,
	// so single requests follow; the reader stays on the poller for a while.
	const singles = 8
	if calmWaits <= singles+1 {
		t.Fatalf("calmWaits = %d: too few for the reader to stay on the poller after %d single requests", calmWaits, singles)
	}
	for range singles {
		tc.smallRead(1)
	}
	stayBlocking(t, 0, wait/4, "soon after two requests in one read")
	tc.calmDown(t, "calm again")

	// A write payload larger than the read buffer: a bulk transfer, whose
	// next request is coming too (see TestBulkWritesSleepForWholePayload),
	// until the client goes quiet. A small request after it does not bring
	// depth-1 mode back at once.
	tc.request(0, cmdWrite, 8, 0, 4*readBufferSize, make([]byte, 4*readBufferSize))
	if e, h := tc.simple(); e != 0 || h != 8 {
		t.Fatalf("large write = errno %d handle %d", e, h)
	}
	stayBlocking(t, 1, wait/4, "after a write larger than the read buffer")
	waitBlocking(t, 0, 2*wait, "after the bulk writes went quiet")
	tc.smallRead(9)
	stayBlocking(t, 0, wait/4, "a small request after bulk writes")
}

// A stream of writes larger than the read buffer reads each payload's rest
// in one sleep (MSG_WAITALL), with the data intact when it comes in pieces:
// after a pause shorter than the receive timeout; after one longer, which
// ends the sleep with part of the payload read (twice: with a rest larger
// than the read buffer, and with one smaller); and after a header with no
// payload yet, where the sleep ends with nothing and the reader goes back
// to the poller mid-payload.
func TestBulkWritesSleepForWholePayload(t *testing.T) {
	const wait = 400 * time.Millisecond
	mem, tc := fastMemClient(t, wait)

	const n = 4 * readBufferSize
	payload := func(seed byte) []byte { return testPayload(n, seed) }
	tc.request(0, cmdWrite, 1, 0, n, payload(1))
	if e, h := tc.simple(); e != 0 || h != 1 {
		t.Fatalf("first bulk write = errno %d handle %d", e, h)
	}
	for i, c := range []struct {
		pause time.Duration
		first int // payload bytes sent with the header
	}{{50 * time.Millisecond, n / 3}, {wait + wait/2, n / 3}, {wait + wait/2, n - readBufferSize/2}, {wait + wait/2, 0}} {
		pause := c.pause
		off := uint64(i+1) * n
		p := payload(byte(i + 2))
		tc.write(append(writeHeader(uint64(i+2), off, n), p[:c.first]...))
		if i == 0 {
			waitBlocking(t, 1, pause/2, "mid-payload, in a bulk stream")
		}
		time.Sleep(pause)
		if c.first == 0 {
			waitBlocking(t, 0, wait/4, "a header, then nothing for longer than the receive timeout")
		}
		tc.write(p[c.first:])
		sent := time.Now()
		if e, got := tc.simple(); e != 0 || got != uint64(i+2) {
			t.Fatalf("bulk write after a %v pause = errno %d handle %d", pause, e, got)
		}
		// Once the rest has come the reply follows: the reader does not
		// wait for more than the payload, however it was split.
		if d := time.Since(sent); d > wait/4 {
			t.Errorf("bulk write %d: reply %v after the rest of the payload was sent", i+2, d)
		}
		if !bytes.Equal(mem.bytesAt(int(off), n), p) {
			t.Fatalf("bulk write after a %v pause: other data stored than sent", pause)
		}
	}
	if !bytes.Equal(mem.bytesAt(0, n), payload(1)) {
		t.Fatal("first bulk write: other data stored than sent")
	}
}

// A stream of small writes that the reader runs itself sleeps in read(2)
// at any depth (conn.smallWrites), and a read ends it: the reader is back on
// the poller at its next wait, not by the receive timeout. A payload that
// comes in pieces, first with the header, then with nothing after it,
// arrives intact, and its reply follows the rest at once.
//
// Only one wait probes the client's depth (gatherState), early on: a probe
// waits on the poller, and the write that comes during it is read there.
func TestSmallWritesSleepInRead(t *testing.T) {
	const wait = 400 * time.Millisecond
	lengthenGatherWaits(t, gatherWait, probeWait)
	mem, tc := fastMemClient(t, wait)

	const n = 512
	payload := func(seed int) []byte { return testPayload(n, byte(seed)) }
	var next uint64 = 1
	stream := func(why string) {
		t.Helper()
		// In one write: one read brings several, so the client is deeper
		// than 1 and depth-1 mode is not what puts the reader to sleep.
		const k = writeRunMin + 4
		var all []byte
		for i := range k {
			h := next + uint64(i)
			all = append(append(all, writeHeader(h, h*n, n)...), payload(int(h))...)
		}
		tc.write(all)
		for range k {
			if e, h := tc.simple(); e != 0 || h < next || h >= next+k {
				t.Fatalf("%s: small write = errno %d handle %d", why, e, h)
			}
		}
		for i := range uint64(k) {
			if !bytes.Equal(mem.bytesAt(int((next+i)*n), n), payload(int(next+i))) {
				t.Fatalf("%s: write %d: other data stored than sent", why, next+i)
			}
		}
		next += k
	}
	// deepReads sends small reads all at once: they rebuild the streak of
	// storage calls served from memory, and being deeper than 1 they leave
	// the reader on the poller.
	deepReads := func() {
		t.Helper()
		const k = 2 * inlineStreak
		var all []byte
		for range k {
			var h [requestLen]byte
			encodeRequest(&h, request{typ: cmdRead, handle: 1, length: 512})
			all = append(all, h[:]...)
		}
		tc.write(all)
		buf := make([]byte, 512)
		for range k {
			if e, h := tc.simple(); e != 0 || h != 1 {
				t.Fatalf("read at depth = errno %d handle %d", e, h)
			}
			tc.read(buf)
		}
	}
	// Storage calls slow enough to end that streak (under load and -race,
	// most are) send writes to workers, and rightly keep the reader on the
	// poller. So this tries streams for up to 10 s.
	streamUntilBlocking := func(why string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; {
			deepReads()
			waitBlocking(t, 0, wait/4, why+": after reads at depth")
			stream(why)
			if blockingWithin(1, wait/4) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d connection(s) in blocking mode after streams for 10s, want 1", why, blockingConns.Load())
			}
		}
	}

	waitBlocking(t, 0, 2*wait, "after the reads at depth 1 went quiet")
	streamUntilBlocking("a stream of small writes at depth")
	tc.smallRead(next)
	waitBlocking(t, 0, wait/4, "a read after small writes")

	streamUntilBlocking("small writes again")
	for i, first := range []int{n / 3, 0} {
		h := next
		p := payload(int(h))
		tc.write(append(writeHeader(h, h*n, n), p[:first]...))
		time.Sleep(wait / 8)
		if k := blockingConns.Load(); i == 0 && k != 1 {
			t.Fatalf("mid-payload, in a stream of small writes: %d connection(s) in blocking mode, want 1", k)
		}
		tc.write(p[first:])
		sent := time.Now()
		if e, got := tc.simple(); e != 0 || got != h {
			t.Fatalf("split write = errno %d handle %d", e, got)
		}
		if d := time.Since(sent); d > wait/4 {
			t.Errorf("split write %d: reply %v after the rest of the payload was sent", h, d)
		}
		if !bytes.Equal(mem.bytesAt(int(h*n), n), p) {
			t.Fatalf("split write %d: other data stored than sent", h)
		}
		next++
	}

	// A large write after small ones is read as they were until its own
	// header has been seen: most of its payload at once without sleeping,
	// then, after a pause, the last few KiB. The payload's rest must be
	// counted down through the first read too, or the reader would then
	// wait for a whole buffer the client is not sending.
	streamUntilBlocking("small writes before a large one")
	const big = 4 * readBufferSize
	p := testPayload(big, 0xa5)
	tc.write(append(writeHeader(next, 0, big), p[:big-readBufferSize/2]...))
	time.Sleep(wait / 8)
	tc.write(p[big-readBufferSize/2:])
	sent := time.Now()
	if e, got := tc.simple(); e != 0 || got != next {
		t.Fatalf("large write after small ones = errno %d handle %d", e, got)
	}
	if d := time.Since(sent); d > wait/4 {
		t.Errorf("large write after small ones: reply %v after the rest of the payload was sent", d)
	}
	if !bytes.Equal(mem.bytesAt(0, big), p) {
		t.Fatal("large write after small ones: other data stored than sent")
	}
}

// With two processors one connection may sleep in read(2), so the runtime
// always has a processor for the rest.
func TestBlockingPlacesLeaveAProcessorFree(t *testing.T) {
	lengthenHotWait(t, 400*time.Millisecond, 2)
	addr := startServer(t, &Server{}, memExport("disk", newMem(testSize)))
	a, b := dialFixed(t, addr), dialFixed(t, addr)
	a.goExport("disk", false)
	b.goExport("disk", false)
	a.fastStreak(0)
	a.calmDown(t, "the first connection at depth 1")
	b.fastStreak(0)
	for range 2 * calmWaits {
		b.smallRead(1)
	}
	stayBlocking(t, 1, 20*time.Millisecond, "the second connection at depth 1 too")
}

// With one processor a reader may sleep in read(2) only while its
// connection is the only one: asleep, it holds the processor every other
// goroutine needs.
func TestOneProcessorSleepsOnlyForTheOnlyConnection(t *testing.T) {
	lengthenHotWait(t, 400*time.Millisecond, 1)
	addr := startServer(t, &Server{}, memExport("disk", newMem(testSize)))
	a := dialFixed(t, addr)
	a.goExport("disk", false)
	a.fastStreak(0)
	a.calmDown(t, "GOMAXPROCS=1, one connection")

	// A second connection: the first leaves blocking mode at its next
	// read, and neither enters it while both are open.
	b := dialFixed(t, addr)
	b.goExport("disk", false)
	a.fastStreak(0)
	waitBlocking(t, 0, 100*time.Millisecond, "GOMAXPROCS=1, a second connection opened")
	for range 4 { // the reader waits for the client after each request
		a.smallRead(1)
		stayBlocking(t, 0, 5*time.Millisecond, "GOMAXPROCS=1, two connections, the first at depth 1")
		b.smallRead(1)
		stayBlocking(t, 0, 5*time.Millisecond, "GOMAXPROCS=1, two connections, the second at depth 1")
	}

	// Alone again.
	b.c.Close()
	for deadline := time.Now().Add(5 * time.Second); openConns.Load() != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections open after the second closed, want 1", openConns.Load())
		}
	}
	a.calmDown(t, "GOMAXPROCS=1, the only connection again")
}

// flushGate holds each Flush until the test sends on gate.
type flushGate struct {
	*memBackend
	gate chan struct{}
}

func (f *flushGate) Flush() error { <-f.gate; return f.memBackend.Flush() }

// While a request runs on a worker the reader waits on the poller: a
// sleeping reader would hold a processor the workers may need.
func TestNoBlockingReadWhileAWorkerRuns(t *testing.T) {
	const wait = 400 * time.Millisecond
	lengthenHotWait(t, wait, 2)
	fg := &flushGate{memBackend: newMem(testSize), gate: make(chan struct{})}
	addr := startServer(t, &Server{}, &Export{
		Name: "disk",
		Open: func(net.Addr) (backend.Backend, error) { return fg, nil },
	})
	t.Cleanup(func() { close(fg.gate) })
	tc := dialFixed(t, addr)
	tc.goExport("disk", false)
	tc.fastStreak(0)
	tc.calmDown(t, "at depth 1")
	tc.request(0, cmdFlush, 7, 0, 0, nil) // FLUSH always runs on a worker
	waitBlocking(t, 0, wait/4, "with a FLUSH on a worker")
	fg.gate <- struct{}{}
	if e, h := tc.simple(); e != 0 || h != 7 {
		t.Fatalf("flush = errno %d handle %d", e, h)
	}
}

// A Unix stream socket (systemd may hand one over) sleeps in read(2) the
// same way, and its data arrives intact.
func TestDepthOneOverUnixSocket(t *testing.T) {
	lengthenHotWait(t, 400*time.Millisecond, 2)
	addr := startServerOn(t, "unix", t.TempDir()+"/nbd.sock", &Server{}, memExport("disk", newMem(testSize)))
	tc := dialOn(t, "unix", addr)
	tc.u32(flagCFixedNewstyle | flagCNoZeroes)
	tc.goExport("disk", false)
	tc.fastStreak(0)
	tc.calmDown(t, "at depth 1 over a Unix socket")

	want := bytes.Repeat([]byte{0x5a}, 4096)
	tc.request(0, cmdWrite, 2, 8192, 4096, want)
	if e, h := tc.simple(); e != 0 || h != 2 {
		t.Fatalf("write = errno %d handle %d", e, h)
	}
	tc.request(0, cmdRead, 3, 8192, 4096, nil)
	if e, h := tc.simple(); e != 0 || h != 3 {
		t.Fatalf("read = errno %d handle %d", e, h)
	}
	got := make([]byte, 4096)
	tc.read(got)
	if !bytes.Equal(got, want) {
		t.Fatal("read back other data than written")
	}
}
