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

// probeEvery is how often a connection whose reads gather, or could,
// measures the client's depth again. Tests lengthen it.
var probeEvery = 200 * time.Millisecond

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
)

// gatherState makes the reader, when it has answered everything and waits
// for a client that keeps many small reads in flight, wait for a batch of
// requests rather than for the first: the socket's low-water mark
// (SO_RCVLOWAT) is set to the batch's headers and the reader sleeps in
// ppoll(2) until they have all come, or gatherWait (gatherRead,
// gather_linux.go). It then reads the batch at once, runs it, and sends
// every reply in one write.
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
// is never probed): a wait for probeMost requests, or probeWait, long
// enough for a client to answer every reply it holds. The most requests
// that came in the last probesKept probes are its depth, since a client
// that is busy elsewhere, or slow for a moment, sends only part of it
// within probeWait. Gathering waits that run out with under half their
// batch, gatherShortMost in a row, end the gathering until the next probe:
// the client has slowed or keeps fewer in flight. Each costs at most
// gatherWait, and one now and then does no harm at depth, where the client
// is busy with the other half of its replies meanwhile.
type gatherState struct {
	want    int             // requests a gathering wait waits for; 0 if waits do not gather
	short   int             // gathering waits in a row that ran out with under half their batch
	found   [probesKept]int // what the last probes found, the newest at found[probes%probesKept]
	probes  int
	probing bool      // the wait under way is a probe
	probed  time.Time // when the last probe began
}

// next says how many requests the reader's wait at now should wait for,
// and for how long at most: (0, 0) for a wait that takes the first request.
// batch is how many requests the reader ran since its last wait.
func (g *gatherState) next(now time.Time, batch int) (int, time.Duration) {
	g.probing = batch > 1 && now.Sub(g.probed) >= probeEvery
	if g.probing {
		g.probed = now
		return probeMost, probeWait
	}
	if g.want == 0 {
		return 0, 0
	}
	return g.want, gatherWait
}

// result takes the outcome of the wait next asked for: whether all the
// requests waited for came (met), and how many came.
func (g *gatherState) result(met bool, got int) {
	switch {
	case g.probing:
		g.probing, g.short, g.want = false, 0, 0
		g.probes++
		g.found[g.probes%probesKept] = got
		if d := slices.Max(g.found[:]); d >= gatherDepthMin {
			g.want = min(d/2, gatherMost)
		}
	case !met && 2*got < g.want:
		if g.short++; g.short == gatherShortMost {
			g.want = 0
		}
	default:
		g.short = 0
	}
}
