package nbd

import (
	"bytes"
	"testing"
	"time"
)

// lengthenGatherWaits makes gathering waits last long enough to observe,
// and probes happen only once.
func lengthenGatherWaits(t *testing.T, gather, probe time.Duration) {
	oldGather, oldProbe, oldEvery := gatherWait, probeWait, probeEvery
	gatherWait, probeWait, probeEvery = gather, probe, time.Hour
	t.Cleanup(func() { gatherWait, probeWait, probeEvery = oldGather, oldProbe, oldEvery })
}

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

// readReplies reads the replies to smallReads(h, n), in order, checks
// their data against mem, and returns how long the first took from since.
func (tc *tclient) readReplies(mem *memBackend, h uint64, n int, since time.Time, what string) time.Duration {
	tc.t.Helper()
	var first time.Duration
	got := make([]byte, 512)
	for i := range uint64(n) {
		tc.replyTo(h+i, since, what)
		if i == 0 {
			first = time.Since(since)
		}
		tc.read(got)
		if off := int((h + i) * 512); !bytes.Equal(got, mem.bytesAt(off, 512)) {
			tc.t.Fatalf("%s: read %d: other data than stored", what, h+i)
		}
	}
	return first
}

// A client that keeps 32 small reads in flight is probed, then its reads
// are gathered 16 at a time; a wait that runs out answers what came; a
// wait that finds nothing leaves the socket's low-water mark behind it
// (else the poller would not wake for one request); gatherShortMost short
// waits in a row end the gathering. Over a Unix socket nothing waits.
func TestReadsAtDepthGather(t *testing.T) {
	const gather, probe = 100 * time.Millisecond, 300 * time.Millisecond
	lengthenGatherWaits(t, gather, probe)
	mem, tc := fastMemClient(t, 800*time.Millisecond)
	mem.with(func() { copy(mem.data, testPayload(1<<20, 7)) })

	// A round of 32: the next wait probes, and finds 32.
	tc.smallReads(100, 32)
	tc.readReplies(mem, 100, 32, time.Now(), "the round before the probe")
	sent := time.Now()
	tc.smallReads(200, 32)
	if d := tc.readReplies(mem, 200, 32, sent, "the probe"); d < probe*3/4 {
		t.Fatalf("the probe: first reply after %v, want about %v (probeWait)", d, probe)
	}

	// Gathering 16: 8 get no reply; 8 more and all 16 get theirs at once.
	tc.smallReads(300, 8)
	tc.noReplyWithin(gather/3, "8 of a batch of 16")
	sent = time.Now()
	tc.smallReads(308, 8)
	if d := tc.readReplies(mem, 300, 16, sent, "a batch of 16"); d > gather/3 {
		t.Fatalf("a batch of 16: first reply %v after the last request, want it at once", d)
	}

	// Two of 16: answered when the wait runs out (short 1).
	sent = time.Now()
	tc.smallReads(400, 2)
	if d := tc.readReplies(mem, 400, 2, sent, "2 of 16"); d < gather*3/4 {
		t.Fatalf("2 of 16: first reply after %v, want about %v (gatherWait)", d, gather)
	}
	// Nothing until the wait has run out (short 2): the reader waits on
	// the poller, which must wake for one request.
	time.Sleep(gather * 3 / 2)
	sent = time.Now()
	tc.smallReads(500, 1)
	if d := tc.readReplies(mem, 500, 1, sent, "a read after an empty wait"); d > gather/3 {
		t.Fatalf("a read after an empty wait: reply after %v, want it at once", d)
	}
	// One at a time (short 3 and on), until gathering ends.
	for h := uint64(600); h < 600+gatherShortMost-2; h++ {
		sent = time.Now()
		tc.smallReads(h, 1)
		if d := tc.readReplies(mem, h, 1, sent, "1 of 16"); d < gather*3/4 {
			t.Fatalf("read %d, 1 of 16: reply after %v, want about %v (gatherWait)", h, d, gather)
		}
	}
	for h := uint64(700); h < 700+4; h++ {
		sent = time.Now()
		tc.smallReads(h, 1)
		if d := tc.readReplies(mem, h, 1, sent, "after the short waits"); d > gather/3 {
			t.Fatalf("read %d after the short waits: reply after %v, want it at once", h, d)
		}
	}

	// Over a Unix socket, whose poll(2) ignores the low-water mark, no wait
	// waits for more than the first request.
	addr := startServerOn(t, "unix", t.TempDir()+"/nbd.sock", &Server{}, memExport("disk", mem))
	tc = dialOn(t, "unix", addr)
	tc.u32(flagCFixedNewstyle | flagCNoZeroes)
	tc.goExport("disk", false)
	tc.fastStreak(0)
	for round := range uint64(3) {
		sent = time.Now()
		tc.smallReads(100*round+100, 32)
		if d := tc.readReplies(mem, 100*round+100, 32, sent, "over a Unix socket"); d > gather/3 {
			t.Fatalf("round %d over a Unix socket: first reply after %v, want it at once", round, d)
		}
	}
}
