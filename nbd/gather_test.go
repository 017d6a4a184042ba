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
	n, d := p.g.next(p.now, batch, 0, false)
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

// A batch's wait naps when the wait before it ran out before its whole
// batch came, and waits on the mark otherwise, as it does first after a
// probe.
func TestGatherNapFollowsTheLastWait(t *testing.T) {
	p := &planner{t: t, now: time.Unix(1e9, 0)}
	naps := func(what string, want bool) {
		t.Helper()
		if p.g.nap != want {
			t.Fatalf("%s: the next wait naps %v, want %v", what, p.g.nap, want)
		}
	}
	p.nextProbe()
	p.probe("a probe", 32)
	naps("after a probe", false)
	p.wait("a wait whose batch came", 32, 16, gatherWait, true, 16)
	naps("after a wait whose batch came", false)
	p.wait("a wait that got three quarters", 12, 16, gatherWait, false, 12)
	naps("after a wait that ran out", true)
	p.wait("a short wait", 7, 16, gatherWait, false, 7)
	naps("after a short wait", true)
	p.wait("a nap whose batch came", 7, 16, gatherWait, true, 20)
	naps("after a nap whose batch came", false)
	p.wait("a wait that ran out", 20, 16, gatherWait, false, 10)
	naps("after another wait that ran out", true)
	p.nextProbe()
	p.probe("the next probe", 32)
	naps("after the next probe", false)
}

// lengthenGatherWaits makes gathering waits last long enough to observe,
// probes happen only once, and the first half of a trial of gathering
// writes, in which they gather, lasts.
func lengthenGatherWaits(t *testing.T, gather, probe time.Duration) {
	oldGather, oldProbe, oldEvery := gatherWait, probeWait, probeEvery
	oldSpan := trialSpan
	gatherWait, probeWait, probeEvery = gather, probe, time.Hour
	trialSpan = time.Hour
	t.Cleanup(func() {
		gatherWait, probeWait, probeEvery = oldGather, oldProbe, oldEvery
		trialSpan = oldSpan
	})
}

// trialWait is a wait at at, with done requests taken, that asks whether
// writes gather; it fails the test unless the answer is want.
func trialWait(t *testing.T, g *gatherTrial, what string, at time.Time, done uint64, want bool) {
	t.Helper()
	if got := g.gathers(at, done); got != want {
		t.Fatalf("%s: gathers = %v, want %v", what, got, want)
	}
}

// A trial gathers writes for trialSpan, then does not for trialSpan, and
// keeps gathering unless that was trialMargin per cent quicker, until the
// next trial trialEvery after; a half ends at the first wait after its span.
func TestGatherTrial(t *testing.T) {
	var g gatherTrial
	t0 := time.Unix(1e9, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	span, ms := trialSpan, time.Millisecond

	// trial runs one from from, with done requests taken, at on and off
	// requests a millisecond in its halves, and checks its verdict.
	trial := func(from time.Duration, done uint64, on, off uint64, verdict bool, what string) (time.Duration, uint64) {
		t.Helper()
		trialWait(t, &g, what+": the first half begins", at(from), done, true)
		trialWait(t, &g, what+": within the first half", at(from+span-ms), done+on*uint64((span-ms)/ms), true)
		done += on * uint64(span/ms)
		trialWait(t, &g, what+": the second half begins", at(from+span), done, false)
		trialWait(t, &g, what+": within the second half", at(from+2*span-ms), done+off*uint64((span-ms)/ms), false)
		done += off * uint64(span/ms)
		trialWait(t, &g, what+": the verdict", at(from+2*span), done, verdict)
		trialWait(t, &g, what+": before the next trial", at(from+2*span+trialEvery-ms), done+1000, verdict)
		return from + 2*span + trialEvery, done + 1000
	}
	next, done := trial(0, 0, 40, 100, false, "gathering at 40 a ms, not at 100")
	next, done = trial(next, done, 40, 41, true, "gathering at 40 a ms, not at 41 (within the margin)")
	next, done = trial(next, done, 40, 43, false, "gathering at 40 a ms, not at 43 (over the margin)")
	trial(next, done, 100, 40, true, "gathering at 100 a ms, not at 40")

	// Writes gather as the trial says; reads gather regardless.
	p := &planner{t: t, now: time.Unix(1e9, 0)}
	p.probe("a round of reads", 32)
	p.g.trial = gatherTrial{on: false, from: p.now}
	if n, _ := p.g.next(p.now, 16, 0, true); n != 0 {
		t.Fatalf("writes, the trial against gathering: next waits for %d, want 0", n)
	}
	if n, _ := p.g.next(p.now, 16, 0, false); n != 16 {
		t.Fatalf("reads, the trial against gathering: next waits for %d, want 16", n)
	}
	p.g.trial.on = true
	if n, _ := p.g.next(p.now, 16, 0, true); n != 16 {
		t.Fatalf("writes, the trial for gathering: next waits for %d, want 16", n)
	}
}
