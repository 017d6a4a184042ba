package nbd

import (
	"bytes"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// smallReads sends n reads of 512 bytes, handles from h, in one write.
func (tc *tclient) smallReads(h uint64, n int) {
	tc.t.Helper()
	var b []byte
	for i := range uint64(n) {
		var hdr [requestLen]byte
		encodeRequest(&hdr, request{typ: cmdRead, handle: h + i, offset: (h + i) * 512, length: 512})
		b = append(b, hdr[:]...)
	}
	tc.write(b)
}

// batchReplies reads the simple replies to requests with handles h to
// h+n-1, in any order, checks that each succeeded and came once, runs check
// on each handle in turn, and returns how long the first took from since.
func (tc *tclient) batchReplies(h uint64, n int, since time.Time, what string, check func(hi uint64)) time.Duration {
	tc.t.Helper()
	var first time.Duration
	seen := make(map[uint64]bool)
	for i := range n {
		e, hi := tc.simple()
		if i == 0 {
			first = time.Since(since)
		}
		if e != 0 || hi < h || hi >= h+uint64(n) || seen[hi] {
			tc.t.Fatalf("%s: reply errno %d handle %d, want success for one of handles %d to %d, each once",
				what, e, hi, h, h+uint64(n)-1)
		}
		seen[hi] = true
		check(hi)
	}
	return first
}

// readReplies reads the replies to smallReads(h, n), in any order, checks
// their data against mem, and returns how long the first took from since.
func (tc *tclient) readReplies(mem *memBackend, h uint64, n int, since time.Time, what string) time.Duration {
	tc.t.Helper()
	got := make([]byte, 512)
	return tc.batchReplies(h, n, since, what, func(hi uint64) {
		tc.read(got)
		if off := int(hi * 512); !bytes.Equal(got, mem.bytesAt(off, 512)) {
			tc.t.Fatalf("%s: read %d: other data than stored", what, hi)
		}
	})
}

// readResult is what one sockReader.Read returned, and when.
type readResult struct {
	n   int
	err error
	at  time.Time
}

// gatherOnce starts one gathering read of want request headers, waiting up
// to within, on r in a goroutine.
func gatherOnce(r *sockReader, want int, within time.Duration) <-chan readResult {
	return gatherBytes(r, want*requestLen, within)
}

// gatherBytes is gatherOnce for a batch of want bytes.
func gatherBytes(r *sockReader, want int, within time.Duration) <-chan readResult {
	r.gather, r.gatherIn = want, within
	done := make(chan readResult, 1)
	go func() {
		n, err := r.Read(make([]byte, readBufferSize))
		done <- readResult{n, err, time.Now()}
	}()
	return done
}

// sendHeaders writes n zeroed request headers' worth of bytes on client,
// and says when.
func sendHeaders(t *testing.T, client net.Conn, n int) time.Time {
	t.Helper()
	if _, err := client.Write(make([]byte, n*requestLen)); err != nil {
		t.Fatal(err)
	}
	return time.Now()
}

// gathered waits up to 5 s for a gathering read started by gatherOnce.
func gathered(t *testing.T, done <-chan readResult, what string) readResult {
	t.Helper()
	select {
	case res := <-done:
		if res.err != nil {
			t.Fatalf("%s: %v", what, res.err)
		}
		return res
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: no return within 5 s", what)
	}
	panic("unreachable")
}

// stillWaiting fails the test if the gathering read returns within d.
func stillWaiting(t *testing.T, done <-chan readResult, d time.Duration, what string) {
	t.Helper()
	select {
	case res := <-done:
		t.Fatalf("%s: the read returned %d bytes", what, res.n)
	case <-time.After(d):
	}
}

// A probe's gathering read returns once all its headers have come, or
// when its wait runs out with what came; one that finds nothing takes the
// low-water mark away before it waits on the runtime's poller, which then
// wakes for a single header. From the first gathering read until the
// reader waits on the poller, the socket is out of the runtime's epoll
// set. A probe waits on the mark even when the wait before it ran out
// and would have had the next one nap (gatherNap).
func TestGatherProbeWaitsForTheMark(t *testing.T) {
	const within = 300 * time.Millisecond
	client, server := tcpPair(t)
	r := newSockReader(server)
	r.gatherProbe, r.gatherNap = true, true
	if !r.canMark() {
		t.Fatal("a TCP socket cannot gather")
	}
	fd := -1
	rawConnOf(server).Control(func(d uintptr) { fd = int(d) })
	polled := func(want bool, when string) {
		t.Helper()
		if got := inRuntimePoller(t, fd); got != want {
			t.Fatalf("%s: socket in the runtime's epoll set %v, want %v", when, got, want)
		}
	}
	polled(true, "before any read")
	send := func(n int) time.Time { return sendHeaders(t, client, n) }
	get := func(done <-chan readResult, what string) readResult { return gathered(t, done, what) }

	// 8 of 16, then the other 8.
	done := gatherOnce(r, 16, within)
	send(8)
	stillWaiting(t, done, within/4, "8 of 16 headers")
	sent := send(8)
	if res := get(done, "16 of 16"); res.n != 16*requestLen || r.gathered != res.n || res.at.Sub(sent) > within/4 {
		t.Fatalf("16 of 16: %d bytes, gathered %d, %v after the last, want %d bytes at once",
			res.n, r.gathered, res.at.Sub(sent), 16*requestLen)
	}

	polled(false, "after a gathering read")

	// 2 of 16: the wait runs out.
	sent = send(2)
	if res := get(gatherOnce(r, 16, within), "2 of 16"); res.n != 2*requestLen || r.gathered != res.n || res.at.Sub(sent) < within*3/4 {
		t.Fatalf("2 of 16: %d bytes, gathered %d, %v after they came, want %d after about %v",
			res.n, r.gathered, res.at.Sub(sent), 2*requestLen, within)
	}
	polled(false, "after a gathering read whose wait ran out")

	// Nothing until the wait has run out, then one header.
	done = gatherOnce(r, 16, within/3)
	time.Sleep(within)
	sent = send(1)
	if res := get(done, "1 after an empty wait"); res.n != requestLen || res.at.Sub(sent) > within/4 {
		t.Fatalf("1 header after an empty wait: %d bytes, %v after it came, want %d at once",
			res.n, res.at.Sub(sent), requestLen)
	}
	polled(true, "after the reader waited on the poller")

	// A Unix socket's poll(2) ignores the mark: it never gathers.
	ln, err := net.Listen("unix", t.TempDir()+"/s")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	u, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if newSockReader(u).canMark() {
		t.Error("a Unix socket can gather")
	}
}

// A batch's gathering read with gatherNap naps rather than wait on the
// low-water mark: while a mark is set and not yet met, the kernel
// acknowledges every second segment that comes, and the send that meets it
// wakes the reader; on loopback the client pays for both in its own send
// (fioprobe.sh counts them). So during a nap the socket has no mark, and
// the batch's coming does not end it. A nap holds its processor, lasting
// as long through the runtime's preemption signals, when one of the
// sleepPlaces is free, and gives the place back; with none free it naps
// the usual way. A batch that is there when the read begins costs no nap.
func TestGatherNaps(t *testing.T) {
	const within = 300 * time.Millisecond
	const n, write = 16, requestLen + 4096 // 16 writes of 4 KiB, on the wire
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	if k := blockingConns.Load(); k != 0 {
		t.Fatalf("%d connection(s) left in blocking mode by an earlier test", k)
	}
	client, server := tcpPair(t)
	r := newSockReader(server)
	r.gatherNap = true
	fd := -1
	rawConnOf(server).Control(func(d uintptr) { fd = int(d) })
	// A probe leaves its mark set; the nap clears it.
	r.mark.set(fd, n*write)
	// sendWrites sends the batch a write at a time, as a client at depth
	// sends each write as it gets a reply, and waits until all of it has
	// come (TCP may pace a sender's segments), failing if the gathering
	// read in flight, if any, returns meanwhile.
	sendWrites := func(what string, done <-chan readResult) {
		t.Helper()
		for range n {
			if _, err := client.Write(make([]byte, write)); err != nil {
				t.Fatal(err)
			}
		}
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			inq, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
			if err != nil {
				t.Fatal(err)
			}
			if inq >= n*write {
				return
			}
			select {
			case res := <-done:
				t.Fatalf("%s: the read returned %d bytes while the batch came", what, res.n)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d of %d bytes came within 5 s", what, inq, n*write)
			}
		}
	}
	// batch checks that a read counted the whole batch, and takes the rest.
	batch := func(res readResult, what string) {
		t.Helper()
		if res.n == 0 || r.gathered != n*write {
			t.Fatalf("%s: read %d bytes, gathered %d, want all %d", what, res.n, r.gathered, n*write)
		}
		if _, err := io.ReadFull(server, make([]byte, n*write-res.n)); err != nil {
			t.Fatal(err)
		}
	}
	napping := func(what string, places int32) {
		t.Helper()
		begun := time.Now()
		done := gatherBytes(r, n*write, within)
		stillWaiting(t, done, within/4, what+": before the batch")
		if k := blockingConns.Load(); k != places {
			t.Fatalf("%s: %d sleep places taken, want %d", what, k, places)
		}
		sendWrites(what, done)
		if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT); err != nil || v > 1 {
			t.Fatalf("%s: SO_RCVLOWAT %d (%v), want none (0 or 1)", what, v, err)
		}
		stillWaiting(t, done, within/4, what+": the batch came")
		res := gathered(t, done, what)
		batch(res, what)
		if d := res.at.Sub(begun); d < within*3/4 {
			t.Fatalf("%s: read %v after the nap began, want about %v", what, d, within)
		}
	}

	napping("a held nap", 1)
	if k := blockingConns.Load(); k != 0 {
		t.Fatalf("after a held nap: %d sleep places taken, want 0", k)
	}
	if ok, _ := sleepPlace(); !ok {
		t.Fatal("no sleep place free with 2 processors")
	}
	napping("a nap with no place free", 1) // the test's
	blockingConns.Add(-1)

	sendWrites("a batch already there", nil)
	begun := time.Now()
	res := gathered(t, gatherBytes(r, n*write, within), "a batch already there")
	batch(res, "a batch already there")
	if d := res.at.Sub(begun); d > within/4 {
		t.Fatalf("a batch already there: read %v after it began, want at once", d)
	}
}

// A batch's wait on the mark holds its processor: it takes one of the
// sleepPlaces while it waits, and gives it back; it waits as long as one
// that does not (300 ms, past the runtime's preemption signals every
// 10 ms), and without a free place it waits the usual way.
func TestHeldGatherWaits(t *testing.T) {
	const within = 300 * time.Millisecond
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	if n := blockingConns.Load(); n != 0 {
		t.Fatalf("%d connection(s) left in blocking mode by an earlier test", n)
	}
	client, server := tcpPair(t)
	r := newSockReader(server)
	send := func(n int) time.Time { return sendHeaders(t, client, n) }
	get := func(done <-chan readResult, what string) readResult { return gathered(t, done, what) }

	done := gatherOnce(r, 16, within)
	send(8)
	stillWaiting(t, done, within/2, "8 of 16 headers, held")
	if n := blockingConns.Load(); n != 1 {
		t.Fatalf("during a held wait: %d sleep places taken, want 1", n)
	}
	sent := send(8)
	if res := get(done, "16 of 16, held"); res.n != 16*requestLen || r.gathered != res.n || res.at.Sub(sent) > within/4 {
		t.Fatalf("16 of 16, held: %d bytes, gathered %d, %v after the last, want %d bytes at once",
			res.n, r.gathered, res.at.Sub(sent), 16*requestLen)
	}
	if n := blockingConns.Load(); n != 0 {
		t.Fatalf("after a held wait: %d sleep places taken, want 0", n)
	}

	// With the one place taken, the wait runs its course without it.
	if ok, _ := sleepPlace(); !ok {
		t.Fatal("no sleep place free with 2 processors")
	}
	defer blockingConns.Add(-1)
	sent = send(2)
	if res := get(gatherOnce(r, 16, within), "2 of 16, no place"); res.n != 2*requestLen || r.gathered != res.n || res.at.Sub(sent) < within*3/4 {
		t.Fatalf("2 of 16 with no place free: %d bytes, gathered %d, %v after they came, want %d after about %v",
			res.n, r.gathered, res.at.Sub(sent), 2*requestLen, within)
	}
	if n := blockingConns.Load(); n != 1 {
		t.Fatalf("after a wait with no place free: %d sleep places taken, want 1 (the test's)", n)
	}
}

// watchProbes makes the connection's reader probe at every wait after
// taking two or more requests, until a probe finds 32, and returns a
// channel that gets what each probe finds. A probe on a fresh connection
// may find fewer than the client keeps in flight: its wait ends when the
// client can send no more, and the receive window may not yet hold 32
// writes of 4 KiB. Only the reader reads probeEvery while the test's one
// connection is open, and it sets it from there.
func watchProbes(t *testing.T) <-chan int {
	found := make(chan int, 100)
	probeEvery = 0
	probeFound = func(got int) {
		if got == 32 {
			probeEvery = time.Hour
		}
		select {
		case found <- got:
		default:
		}
	}
	t.Cleanup(func() { probeFound = nil })
	return found
}

// roundsUntilProbed runs rounds of 32 requests, each answered before the
// next, until a probe finds 32: the probe in the wait after a round finds
// the next round. A probe has ended once the reader takes a request after
// it, so once the round after it is answered. round returns how long its
// first reply took; roundsUntilProbed, how long it took in the round the
// probe found.
func roundsUntilProbed(t *testing.T, probes <-chan int, what string, round func(uint64) time.Duration) time.Duration {
	t.Helper()
	var found []int
	for i := range uint64(20) {
		d := round(i)
		for len(probes) > 0 {
			got := <-probes
			if got == 32 {
				return d
			}
			found = append(found, got)
		}
	}
	t.Fatalf("20 rounds of 32 %s: no probe found 32 (probes found %v)", what, found)
	return 0
}

// A client that keeps 32 small reads in flight is probed, and then its
// reads are gathered 16 at a time: 8 get no reply until 8 more come, or,
// after a wait that ran out before its batch came, until a nap runs out.
// The reader gathers only while it runs requests itself, from a streak
// of fast storage calls that load on the machine can break, so the test
// sends rounds until a probe finds 32, and tries the batch up to 5 times.
// Over a Unix socket nothing waits.
func TestReadsAtDepthGather(t *testing.T) {
	const gather, probe = 100 * time.Millisecond, 300 * time.Millisecond
	lengthenGatherWaits(t, gather, probe)
	probes := watchProbes(t)
	mem, tc := fastMemClient(t, 800*time.Millisecond)
	mem.with(func() { copy(mem.data, testPayload(1<<20, 7)) })

	d := roundsUntilProbed(t, probes, "reads", func(round uint64) time.Duration {
		sent := time.Now()
		tc.smallReads(100, 32)
		return tc.readReplies(mem, 100, 32, sent, "a round of 32")
	})
	if d < probe*3/4 {
		// 32 reads fill no receive window: the probe waits its whole time
		// for the 64 it asks for.
		t.Fatalf("the round a probe found: first reply after %v, want about %v", d, probe)
	}

	// batch16 sends 8 reads from handle h, and if none is answered within
	// gather/3, 8 more; it then says how long the first of the 16 replies
	// took after the last request. If one of the 8 was answered, the wait
	// did not gather (gathered false).
	batch16 := func(h uint64) (gathered bool, d time.Duration) {
		tc.smallReads(h, 8)
		tc.c.SetReadDeadline(time.Now().Add(gather / 3))
		_, err := tc.br.Peek(1)
		tc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if err == nil {
			tc.readReplies(mem, h, 8, time.Now(), "8 answered without gathering")
			return false, 0
		}
		sent := time.Now()
		tc.smallReads(h+8, 8)
		return true, tc.readReplies(mem, h, 16, sent, "a batch of 16")
	}
	// again sends two rounds of 32: they restore the streak of fast calls,
	// if a slow one broke it, and each gets its whole batch.
	const tries = 5
	again := func(try int, what string) {
		if try == tries {
			t.Fatalf("%s, %d times", what, tries)
		}
		for range 2 {
			tc.smallReads(100, 32)
			tc.readReplies(mem, 100, 32, time.Now(), "a round of 32 between tries")
		}
	}

	// Gathering 16 on the mark, first after a probe: 8 get no reply; 8
	// more and all 16 get theirs at once.
	for try := 1; ; try++ {
		ok, d := batch16(300)
		if !ok {
			again(try, "8 of a batch of 16 got replies before the rest came")
			continue
		}
		if d > gather/3 {
			t.Fatalf("a batch of 16: first reply %v after the last request, want it at once", d)
		}
		break
	}

	// A wait that runs out before its batch came makes the next one a nap
	// (gatherState.nap): 8 and 8 more get their replies only when the nap
	// runs out. That nap got its whole batch, so the wait after it is on
	// the mark again.
	for try := 1; ; try++ {
		tc.smallReads(400, 4)
		tc.readReplies(mem, 400, 4, time.Now(), "4 reads, answered when the wait ran out")
		ok, d := batch16(500)
		if !ok {
			again(try, "8 of a batch of 16 got replies before the rest came, after a wait that ran out")
			continue
		}
		if d < gather/3 || d > gather {
			t.Fatalf("a batch of 16 after a wait that ran out: first reply %v after the last request, want it when the nap of %v ran out, about %v after",
				d, gather, gather*2/3)
		}
		ok, d = batch16(600)
		if !ok {
			again(try, "8 of a batch of 16 got replies before the rest came, after a nap")
			continue
		}
		if d > gather/3 {
			t.Fatalf("a batch of 16 after a nap that got its batch: first reply %v after the last request, want it at once", d)
		}
		break
	}

	// Over a Unix socket, whose poll(2) ignores the low-water mark, no wait
	// waits for more than the first request.
	addr := startServerOn(t, "unix", t.TempDir()+"/nbd.sock", &Server{}, memExport("disk", mem))
	tc = dialOn(t, "unix", addr)
	tc.u32(flagCFixedNewstyle | flagCNoZeroes)
	tc.goExport("disk", false)
	tc.fastStreak(0)
	for round := range uint64(3) {
		sent := time.Now()
		tc.smallReads(100*round+100, 32)
		if d := tc.readReplies(mem, 100*round+100, 32, sent, "over a Unix socket"); d > gather/3 {
			t.Fatalf("round %d over a Unix socket: first reply after %v, want it at once", round, d)
		}
	}
}

// smallWrites sends n writes of 4 KiB, handles from h, each at its handle's
// block of 4 KiB, in one write; their data differs with seed.
func (tc *tclient) smallWrites(h uint64, n int, seed byte) {
	tc.t.Helper()
	tc.write(writeBatch(h, n, seed))
}

// writeBatch is what smallWrites sends.
func writeBatch(h uint64, n int, seed byte) []byte {
	var b []byte
	for i := range uint64(n) {
		b = append(b, writeHeader(h+i, blockOf(h+i), 4096)...)
		b = append(b, testPayload(4096, seed+byte(i))...)
	}
	return b
}

// blockOf is where smallWrites writes handle h.
func blockOf(h uint64) uint64 { return h % (testSize / 4096) * 4096 }

// writeReplies reads the replies to smallWrites(h, n, seed), in any order,
// checks that mem holds what each wrote, and returns how long the first
// took from since.
func (tc *tclient) writeReplies(mem *memBackend, h uint64, n int, seed byte, since time.Time, what string) time.Duration {
	tc.t.Helper()
	return tc.batchReplies(h, n, since, what, func(hi uint64) {
		if !bytes.Equal(mem.bytesAt(int(blockOf(hi)), 4096), testPayload(4096, seed+byte(hi-h))) {
			tc.t.Fatalf("%s: write %d: other data stored than sent", what, hi)
		}
	})
}

// A client that keeps 32 writes of 4 KiB in flight is probed, and then its
// writes are gathered 16 at a time, as reads are: 8 get no reply until 8
// more come, then all 16 at once, their payloads larger than the reader's
// buffer. A batch that stops partway through a payload is answered up to
// there: the reader does not hold replies while it waits for the rest.
// (See TestReadsAtDepthGather for why the test tries more than once.)
func TestWritesAtDepthGather(t *testing.T) {
	const gather, probe = 100 * time.Millisecond, 300 * time.Millisecond
	lengthenGatherWaits(t, gather, probe)
	probes := watchProbes(t)
	mem, tc := fastMemClient(t, 800*time.Millisecond)

	roundsUntilProbed(t, probes, "writes", func(round uint64) time.Duration {
		tc.smallWrites(100, 32, byte(round))
		return tc.writeReplies(mem, 100, 32, byte(round), time.Now(), "a round of 32")
	})

	// until sends what sends, then says whether a reply came within gather/3.
	until := func(send func()) bool {
		send()
		tc.c.SetReadDeadline(time.Now().Add(gather / 3))
		_, err := tc.br.Peek(1)
		tc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		return err == nil
	}
	// again restores the streak of fast calls, if a slow one broke it.
	again := func(try int, what string) {
		if try == 5 {
			t.Fatalf("%s, 5 times", what)
		}
		for range 2 {
			tc.smallWrites(100, 32, 50)
			tc.writeReplies(mem, 100, 32, 50, time.Now(), "a round of 32 between tries")
		}
	}

	// Gathering 16: 8 get no reply; 8 more and all 16 get theirs at once.
	for try := 1; ; try++ {
		if until(func() { tc.smallWrites(300, 8, 60) }) {
			tc.writeReplies(mem, 300, 8, 60, time.Now(), "8 answered without gathering")
			again(try, "8 of a batch of 16 got replies before the rest came")
			continue
		}
		sent := time.Now()
		tc.write(writeBatch(308, 8, 68))
		if d := tc.writeReplies(mem, 300, 16, 60, sent, "a batch of 16"); d > gather/3 {
			t.Fatalf("a batch of 16: first reply %v after the last request, want it at once", d)
		}
		break
	}

	// 8 writes and half of a ninth: when the wait runs out the 8 are
	// answered, with the ninth's payload still to come.
	for try := 1; ; try++ {
		b := writeBatch(400, 9, 70)
		half := len(b) - 2048
		if until(func() { tc.write(b[:half]) }) {
			tc.write(b[half:])
			tc.writeReplies(mem, 400, 9, 70, time.Now(), "9 answered without gathering")
			again(try, "8 of a batch of 16 got replies before the wait ran out")
			continue
		}
		tc.c.SetReadDeadline(time.Now().Add(gather * 5))
		tc.writeReplies(mem, 400, 8, 70, time.Now(), "8 writes when the wait ran out")
		tc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		tc.write(b[half:])
		tc.writeReplies(mem, 408, 1, 78, time.Now(), "the ninth, once all of it came")
		break
	}
}
