package nbd

import (
	"slices"
	"time"
)

// gatherWait bounds how long a gathering wait (see gatherState) waits for
// its batch of requests; probeWait how long a probe waits for the client's
// whole depth. Tests lengthen them.
var (
	gatherWait = 50 * time.Microsecond
	probeWait  = time.Millisecond
)

// probeFound, if set, is told what each probe found: how many requests
// came. Tests set it, to know when a probe has run; the length of the
// probe's wait does not tell, as it ends early when the client can send
// no more (a full receive window).
var probeFound func(got int)

// probeEvery is how often a connection whose reads gather, or could,
// measures the client's depth again. Tests lengthen it.
var probeEvery = 200 * time.Millisecond

// trialSpan is how long each half of a trial of gathering writes lasts
// (gatherTrial), and trialEvery how often a connection runs one. Against
// fio at depth 32, spans of 40 ms chose wrong in 2 of 8 trials, of 150 ms
// in 2 of 16. Tests lengthen them.
var (
	trialSpan  = 150 * time.Millisecond
	trialEvery = 2 * time.Second
)

const (
	// probeMost is the most requests a probe waits for: more than any
	// depth it needs to tell apart.
	probeMost = 64
	// gatherDepthMin is the least depth at which reads gather; the reader
	// then waits for half of it, up to gatherMost requests.
	gatherDepthMin = 16
	gatherMost     = 16
	// gatherShortMost is how many gathering waits in a row may run out
	// with under half their batch before waits stop gathering.
	gatherShortMost = 8
	// probesKept is how many probes' findings make the depth.
	probesKept = 4
	// trialMargin is how much quicker, in per cent, writes must run
	// without gathering in a trial to stop gathering.
	trialMargin = 5
)

// gatherState makes the reader, when it has answered everything and waits
// for a client that keeps many small reads in flight, wait for a batch of
// requests rather than for the first: unless the batch is there already,
// it waits up to gatherWait on the socket's low-water mark (SO_RCVLOWAT),
// or, when the wait before ran out before its batch came, sleeps that long
// (a nap; gatherRead, gather_linux.go, says why). It then reads what came
// at once, runs it, and sends every reply in one write.
//
// Why: at depth 32 a reader that takes each request as it comes reads one
// or two at a time, since it is quicker than the client, and so pays a
// failed read, a wait on the runtime's poller and a reply write every
// request or two; the client pays a wake-up for each of those writes. On
// two shared cores server and client then fill both, and the server's
// share is what the client does not get. With fio's 4 KiB reads at depth
// 32 on two shared cores, gathering took the server's CPU from 4.2 to 2.5 s
// per GiB, the client's by a seventh, and the rate from 203 to 248 MiB/s.
//
// Why only at depth: the batch is at most half the client's depth, so
// while the reader waits for it the client still has the other half of its
// replies to take in and answer. At depth 8, a batch of 2 or 4 left both
// sides waiting on each other and cost a tenth to a fifth of the rate; at
// depth 16, 24 and 32, half the depth did best.
//
// The depth is measured by a probe, at most every probeEvery and only when
// the reader last found two or more requests together (a client at depth 1
// is never probed): a wait on the mark for probeMost requests, or
// probeWait, long enough for a client to answer every reply it holds. The
// most requests that came in the last probesKept probes are its depth,
// since a client that is busy elsewhere, or slow for a moment, sends only
// part of it within probeWait. Gathering waits that end with under half
// their batch, gatherShortMost in a row, end the gathering until the next
// probe: the client has slowed or keeps fewer in flight. Each costs at most
// gatherWait, and one now and then does no harm at depth, where the client
// is busy with the other half of its replies meanwhile.
//
// Writes gather too, counted in their size on the wire (conn.unit), but only
// where a trial finds them quicker for it (gatherTrial).
type gatherState struct {
	trial   gatherTrial
	want    int             // requests a gathering wait waits for; 0 if waits do not gather
	short   int             // gathering waits in a row that ran out with under half their batch
	found   [probesKept]int // what the last probes found, the newest at found[probes%probesKept]
	probes  int
	probing bool      // the wait under way is a probe
	nap     bool      // the next batch's wait naps: the last ran out before its batch came
	probed  time.Time // when the last probe began
}

// next says how many requests the reader's wait at now should wait for,
// and for how long at most: (0, 0) for a wait that takes the first request.
// batch is how many requests the reader ran since its last wait, done how
// many it has taken in all, and writes says the last was a write.
func (g *gatherState) next(now time.Time, batch int, done uint64, writes bool) (int, time.Duration) {
	g.probing = batch > 1 && now.Sub(g.probed) >= probeEvery
	if g.probing {
		g.probed = now
		return probeMost, probeWait
	}
	if g.want == 0 || writes && !g.trial.gathers(now, done) {
		return 0, 0
	}
	return g.want, gatherWait
}

// result takes the outcome of the wait next asked for: whether all the
// requests waited for came (met), and how many came.
func (g *gatherState) result(met bool, got int) {
	if g.probing {
		g.probing, g.short, g.want, g.nap = false, 0, 0, false
		g.probes++
		g.found[g.probes%probesKept] = got
		if probeFound != nil {
			probeFound(got)
		}
		if d := slices.Max(g.found[:]); d >= gatherDepthMin {
			g.want = min(d/2, gatherMost)
		}
		return
	}
	g.nap = !met
	if met || 2*got >= g.want {
		g.short = 0
	} else if g.short++; g.short == gatherShortMost {
		g.want = 0
	}
}

// gatherTrial decides whether a client's writes gather, by trying: for
// trialSpan they gather, for trialSpan they do not, and the way that took
// more requests in its span is kept until the next trial, trialEvery later.
// Gathering is kept unless the other way was trialMargin per cent quicker:
// it costs the server less CPU per write either way.
//
// Why a trial: with fio's 4 KiB writes at depth 32, gathering them took a
// server held to 0.3 of a core from 28–30 to 39–44 thousand writes a
// second, and one on a core of its own from 9.6–10.6 to 6.9–7.3 ms of CPU
// per thousand at the same rate. But with client and server sharing two
// cores it cost a tenth to a fifth of the rate (88–100 → 73–87 thousand):
// fio was the slower side, and idled while the server held replies to
// gather. Reads gather in all three: a read costs the client less.
//
// The reader counts on its own requests, taken at its waits (next), so a
// span lasts from the first wait after it was due to end.
type gatherTrial struct {
	half  int       // 1 while gathering is tried, 2 while not gathering is; 0 between trials
	on    bool      // the last trial's verdict: writes gather
	from  time.Time // when the half, or the verdict, began
	done  uint64    // requests taken by then
	rated float64   // requests a second with gathering, from the first half
}

// gathers says whether the reader's wait at now, with done requests taken,
// gathers writes.
func (t *gatherTrial) gathers(now time.Time, done uint64) bool {
	since := now.Sub(t.from)
	switch {
	case t.half == 0 && (t.from.IsZero() || since >= trialEvery):
		t.half, t.from, t.done = 1, now, done
	case t.half != 0 && since >= trialSpan:
		rate := float64(done-t.done) / since.Seconds()
		if t.half == 1 {
			t.half, t.rated = 2, rate
		} else {
			t.half, t.on = 0, rate*100 <= t.rated*(100+trialMargin)
		}
		t.from, t.done = now, done
	}
	switch t.half {
	case 1:
		return true
	case 2:
		return false
	}
	return t.on
}
