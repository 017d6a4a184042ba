package nbd

import (
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// gatherRead reads on a non-blocking socket once r.gather bytes have come,
// or r.gatherIn has passed (see gatherState), then reads whatever is there
// without sleeping. Unless the batch is there already, it waits on the
// low-water mark in ppoll(2), or with gatherNap it naps: it sleeps out
// gatherIn in nanosleep(2) with no mark set. A probe (gatherProbe) always
// waits on the mark. A wait on the mark leaves it set; the next nap, or a
// read that found nothing, clears it.
//
// Why a nap, when a wait on the mark ends as soon as the batch is there:
// both the mark's ends cost the client. The send that meets the mark wakes
// the reader, once a batch, and on loopback the client's send runs the
// wake-up; and while a mark is set and not yet met, TCP acknowledges every
// second segment that comes, so that the sender is not held up for a
// window the reader has yet to open, and the client makes and takes each
// of those ACKs in its own send too (a batch of 16 writes of 4 KiB comes
// in 16 segments). A nap ends on the server's own timer. With fio at depth
// 32 on 4 KiB requests (fioprobe.sh, one core each): writes on the mark
// sent fio 0.40 pure ACKs a write and napping 0.17, and reads had fio wake
// the server 0.055–0.063 times a read on the mark and 0.0013–0.0015
// napping; fio's CPU fell from 8.94 to 8.59 µs a write and from 9.34 to
// 8.85 µs a read.
//
// Why not always: the nap lasts 50–100 µs (gatherWait and the kernel's
// timer slack) whether or not the batch came sooner, and a client that
// has sent all it can meanwhile idles. Napping at every wait took fio's
// 4 KiB reads at depth 16 to 0.74× the rate on the mark, and at depth 24
// to 0.89× (5 alternating rounds, one core each). So a wait naps only
// when the wait before it ran out before its batch came (gatherState.nap):
// the client was then still sending when the wait ended, busy with the
// rest of its replies, as fio is at depth 32. Against the build whose
// waits were all on the mark, in alternating rounds with one core each:
// reads at depth 16 1.00×, 24 1.05×, 32 1.04×; writes at 16 1.04×, 32
// 1.04×; with the cores shared, depth 32 reads 1.00× and writes 1.03×;
// held to 0.3 of a core, 1.02× and 1.03× (5 rounds each, 10 held reads).
//
// What came is counted, not taken from ppoll: TCP reports a socket readable
// below its mark too, when its receive window or memory runs low. The
// reader holds replies for as many requests as it was told came (conn's
// ahead); a count too high would have it wait, replies held, for requests
// the client sends only once it has them. When the read fills the buffer,
// the bytes left in the socket are counted too (SIOCINQ): a batch of
// writes is larger than the buffer.
//
// The socket leaves the runtime's epoll set for the wait (pollHide), and
// stays out until the reader next waits on the runtime's poller (readOnce
// puts it back). Why: with two or more processors the runtime keeps a
// thread asleep in epoll_wait for the idle ones, and each request that
// arrived while the reader waited, before it had read the batch, woke that
// thread for nothing, at the client's expense. With fio's 4 KiB reads at
// depth 32 on two shared cores (waits on the mark then), 23 of every 32
// wake-ups fio made of the server went to that thread (`perf record -g -e
// sched:sched_waking`), and hiding the socket took the rate from 89 to 97
// thousand reads a second, writes from 90 to 105 thousand, with less
// server CPU per request (6 alternating rounds each). With one processor
// nothing sleeps in epoll_wait while the reader runs, and it changed
// nothing measurable.
//
// With one of the sleepPlaces free, a batch's wait keeps the thread's
// processor (a raw ppoll or nanosleep, which the runtime does not see). A
// sleep the runtime sees, after the process was idle, wakes the runtime's
// monitor thread (sysmon), which then polls every 20 µs for a while, and
// the processor may go to another thread that finds nothing to do. With
// fio's 4 KiB reads at depth 32 against a server held to 0.3 of a core
// (all waits on the mark then), per request: context switches 0.29 →
// 0.08, futex calls 0.06 → 0.001, nanosleep (sysmon's) 0.10 → 0.01; and
// 32–37 → 47–52 thousand IOPS. A probe waits up to 1 ms, too long to hold
// a processor.
func (r *sockReader) gatherRead(fd uintptr) {
	r.hide.hide(int(fd)) // see above; until readOnce shows it
	switch {
	case r.gatherProbe:
		r.mark.wait(fd, r.gather, r.gatherIn, false)
	case r.gatherNap:
		r.mark.clear(int(fd))
		fallthrough
	default:
		if inq, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil && inq >= r.gather {
			break // the batch is there
		}
		hold, _ := sleepPlace()
		if r.gatherNap {
			nap(r.gatherIn, hold)
		} else {
			r.mark.wait(fd, r.gather, r.gatherIn, hold)
		}
		if hold {
			blockingConns.Add(-1)
		}
	}
	r.n, r.err = rawRead(fd, r.p)
	switch {
	case r.err == unix.EAGAIN:
		r.mark.clear(int(fd))
	case r.err == nil:
		r.gathered = r.n
		if r.n == len(r.p) {
			if more, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil {
				r.gathered += more
			}
		}
	}
}

// nap sleeps for d in nanosleep(2); with hold, as a raw system call, which
// the runtime does not see: the thread keeps its processor. A signal (the
// runtime preempts with them) ends a sleep early; the rest is slept then.
func nap(d time.Duration, hold bool) {
	ts := unix.NsecToTimespec(int64(d))
	for {
		var err error
		if hold {
			_, _, e := syscall.RawSyscall(unix.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), uintptr(unsafe.Pointer(&ts)), 0)
			if e != 0 {
				err = e
			}
		} else {
			err = unix.Nanosleep(&ts, &ts)
		}
		if err != unix.EINTR {
			return
		}
	}
}
