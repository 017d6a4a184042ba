package nbd

import (
	"testing"
	"time"
)

// planner drives a gatherState through waits at times it chooses.
type planner struct {
	t   *testing.T
	g   gatherState
	now time.Time
}

// wait checks what the wait after a round of batch requests asks for,
// then, if it gathers, gives it its outcome. The clock moves 1 ms.
func (p *planner) wait(what string, batch, want int, wait time.Duration, met bool, got int) {
	p.t.Helper()
	p.now = p.now.Add(time.Millisecond)
	n, d := p.g.next(p.now, batch)
	if n != want || d != wait {
		p.t.Fatalf("%s: next = %d requests within %v, want %d within %v", what, n, d, want, wait)
	}
	if n > 0 {
		p.g.result(met, got)
	}
}

// probe checks that the wait probes, and gives it got requests.
func (p *planner) probe(what string, got int) {
	p.t.Helper()
	p.wait(what, 2, probeMost, probeWait, false, got)
}

// plain checks that the wait takes the first request.
func (p *planner) plain(what string, batch int) {
	p.t.Helper()
	p.wait(what, batch, 0, 0, false, 0)
}

// nextProbe moves the clock to the next probe's time.
func (p *planner) nextProbe() { p.now = p.now.Add(probeEvery) }

// The gathering plan, wait by wait: probes only after a round of two or
// more requests and at most every probeEvery; half the depth the last
// probesKept probes found, up to gatherMost, from gatherDepthMin;
// gatherShortMost short waits in a row end it, and any other outcome
// starts the count again.
func TestGatherPlan(t *testing.T) {
	p := &planner{t: t, now: time.Unix(1e9, 0)}
	p.plain("depth 1 before any probe", 1)
	p.nextProbe()
	p.plain("depth 1 later", 1)

	p.probe("the first round of two", 32)
	p.wait("after a probe found 32", 32, 16, gatherWait, true, 16)
	p.wait("a wait that got three quarters", 12, 16, gatherWait, false, 12)
	for range gatherShortMost - 1 {
		p.wait("a short wait", 7, 16, gatherWait, false, 7)
	}
	p.wait("a good wait after short ones", 7, 16, gatherWait, true, 16)
	for range gatherShortMost {
		p.wait("a short wait after a good one", 16, 16, gatherWait, false, 7)
	}
	p.plain("after too many short waits", 7)
	p.plain("still, until the next probe", 9)

	// Probes that find less keep the depth the best of the last ones found.
	for i := range probesKept - 1 {
		p.nextProbe()
		p.probe("a probe that finds 12", 12)
		if i == 0 {
			p.wait("after a probe found 12, with 32 before", 12, 16, gatherWait, true, 16)
		}
	}
	p.nextProbe()
	p.probe("the probe after which 32 is forgotten", 12)
	p.plain("after probesKept probes found 12", 12)

	p.nextProbe()
	p.probe("a probe that finds 16", 16)
	p.wait("after a probe found 16", 16, 8, gatherWait, true, 8)
	p.wait("an empty wait", 1, 8, gatherWait, false, 0)
	p.wait("a wait after an empty one", 1, 8, gatherWait, true, 9)
}
