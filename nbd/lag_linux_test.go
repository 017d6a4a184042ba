package nbd

import (
	"bytes"
	"errors"
	"os"
	"testing"
	"time"
)

// lengthenLagWait makes lagState.read wait d for the next header, long
// enough to observe.
func lengthenLagWait(t *testing.T, d time.Duration) {
	old := lagWait
	lagWait = d
	t.Cleanup(func() { lagWait = old })
}

// noReplyWithin fails if the server sends anything within d.
func (tc *tclient) noReplyWithin(d time.Duration, why string) {
	tc.t.Helper()
	tc.c.SetReadDeadline(time.Now().Add(d))
	_, err := tc.br.Peek(1)
	tc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err == nil {
		tc.t.Fatalf("%s: a reply came within %v", why, d)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		tc.t.Fatalf("%s: %v", why, err)
	}
}

// replyTo reads a simple reply, checks it is a success for handle h, and
// returns how long it took from since.
func (tc *tclient) replyTo(h uint64, since time.Time, what string) time.Duration {
	tc.t.Helper()
	if e, got := tc.simple(); e != 0 || got != h {
		tc.t.Fatalf("%s = errno %d handle %d, want 0 and %d", what, e, got, h)
	}
	return time.Since(since)
}

// In a stream of bulk writes, the rest of each payload is read once the
// next request's header has come, so its reply waits for that header; when
// the header does not come within lagWait, the reply goes anyway, and the
// next writes are read at once (the backoff).
func TestBulkWritesLagForTheNextHeader(t *testing.T) {
	const wait, lag = 800 * time.Millisecond, 200 * time.Millisecond
	lengthenLagWait(t, lag)
	lengthenHotWait(t, wait, 2)
	mem := newMem(testSize)
	tc := dialFixed(t, startServer(t, &Server{}, memExport("disk", mem)))
	tc.goExport("disk", false)
	const n = 2 * readBufferSize

	// The first bulk write puts the reader in blocking mode. (No reads at
	// depth 1 before it: they would have done so already, and its payload
	// would lag.)
	tc.write(append(writeHeader(1, 0, n), testPayload(n, 1)...))
	tc.replyTo(1, time.Now(), "first bulk write")
	waitBlocking(t, 1, wait/4, "after a bulk write")

	tc.write(append(writeHeader(2, n, n), testPayload(n, 2)...))
	tc.noReplyWithin(lag/4, "a bulk write whose next request has not come")
	sent := time.Now()
	tc.write(writeHeader(3, 2*n, n))
	if d := tc.replyTo(2, sent, "bulk write 2"); d > lag/2 {
		t.Errorf("bulk write 2: reply %v after the next header, want it at once", d)
	}
	sent = time.Now()
	tc.write(testPayload(n, 3))
	d := tc.replyTo(3, sent, "bulk write 3, the last of its burst")
	if d < lag*3/4 || d > wait/2 {
		t.Errorf("bulk write 3: reply %v after its payload, want about %v (lagWait)", d, lag)
	}

	// A miss: the next writes do not lag.
	for i := range uint64(lagBackoffMin - 1) {
		sent = time.Now()
		tc.write(append(writeHeader(4+i, (3+i)*n, n), testPayload(n, byte(4+i))...))
		if d := tc.replyTo(4+i, sent, "bulk write after a miss"); d > lag/2 {
			t.Fatalf("bulk write %d after a miss: reply after %v, want it at once", 4+i, d)
		}
	}
	for i := range lagBackoffMin + 2 {
		if off := i * n; !bytes.Equal(mem.bytesAt(off, n), testPayload(n, byte(i+1))) {
			t.Fatalf("bulk write %d: other data stored than sent", i+1)
		}
	}
}

// A lagging read gets every byte and replies as soon as it can, however
// the payload and the next header come: a rest that stops short for longer
// than lagWait, and a next header that comes in two pieces with a pause
// between (the read that waits for its second piece must not keep the
// low-water mark). Over a Unix socket, whose poll(2) ignores the mark,
// nothing lags and the data is intact.
func TestLaggingReadsGetEveryByte(t *testing.T) {
	const wait, lag = 800 * time.Millisecond, 100 * time.Millisecond
	lengthenLagWait(t, lag)
	lengthenHotWait(t, wait, 2)
	const n = 4 * readBufferSize
	mem := newMem(testSize)
	tcpAddr := startServer(t, &Server{}, memExport("disk", mem))
	unixAddr := startServerOn(t, "unix", t.TempDir()+"/nbd.sock", &Server{}, memExport("disk", mem))

	// lagging connects and leaves a client whose next bulk write lags:
	// two bulk writes, the second one's reply freed by the next header.
	lagging := func(network, addr string) *tclient {
		tc := dialOn(t, network, addr)
		tc.u32(flagCFixedNewstyle | flagCNoZeroes)
		tc.goExport("disk", false)
		for h := range uint64(2) {
			tc.write(append(writeHeader(h+1, h*n, n), testPayload(n, byte(h+1))...))
			if h == 1 {
				tc.write(writeHeader(3, 2*n, n))
			}
			tc.replyTo(h+1, time.Now(), "bulk write")
		}
		return tc
	}
	done := func(tc *tclient, network string) {
		tc.c.Close()
		waitBlocking(t, 0, wait, network+": after the client closed")
		for openConns.Load() != 0 {
			time.Sleep(time.Millisecond)
		}
	}
	check := func(what string, off, h int) {
		t.Helper()
		if !bytes.Equal(mem.bytesAt(off, n), testPayload(n, byte(h))) {
			t.Fatalf("%s: other data stored than sent", what)
		}
	}

	// Write 3's rest stops short for longer than lagWait.
	tc := lagging("tcp", tcpAddr)
	p := testPayload(n, 3)
	tc.write(p[:n/2])
	time.Sleep(lag + lag/2)
	sent := time.Now()
	tc.write(p[n/2:])
	if d := tc.replyTo(3, sent, "a rest that stopped short"); d > wait/4 {
		t.Errorf("a rest that stopped short: reply %v after its last byte", d)
	}
	check("a rest that stopped short", 2*n, 3)
	done(tc, "tcp")

	// Write 3 whole, and 10 bytes of the next request's header (a small
	// read); the other 18 after lagWait, and nothing after them.
	tc = lagging("tcp", tcpAddr)
	var h4 [requestLen]byte
	encodeRequest(&h4, request{typ: cmdRead, handle: 4, offset: 2 * n, length: 512})
	tc.write(append(testPayload(n, 3), h4[:10]...))
	tc.replyTo(3, time.Now(), "a write followed by part of a header")
	time.Sleep(lag / 2)
	sent = time.Now()
	tc.write(h4[10:])
	if d := tc.replyTo(4, sent, "a read whose header came in two pieces"); d > wait/4 {
		t.Errorf("a read whose header came in two pieces: reply %v after its last byte", d)
	}
	got := make([]byte, 512)
	tc.read(got)
	check("a write followed by part of a header", 2*n, 3)
	if !bytes.Equal(got, testPayload(n, 3)[:512]) {
		t.Fatal("a read after a lagging write: other data than written")
	}
	done(tc, "tcp")

	// Over a Unix socket the payload is read as it comes.
	tc = lagging("unix", unixAddr)
	for h := 3; h < 3+8; h++ {
		tc.write(testPayload(n, byte(h)))
		tc.write(writeHeader(uint64(h+1), uint64(h)*n, n))
		tc.replyTo(uint64(h), time.Now(), "bulk write over a Unix socket")
		check("bulk write over a Unix socket", (h-1)*n, h)
	}
	done(tc, "unix")
}
