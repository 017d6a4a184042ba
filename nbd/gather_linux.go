package nbd

import (
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// gatherRead reads on a non-blocking socket once r.gather bytes have come,
// or r.gatherIn has passed (see gatherState): it waits on the low-water
// mark, then reads whatever is there without sleeping. It leaves the mark
// set for the next gathering read, but not when it read nothing: the
// reader then waits on the runtime's poller.
//
// A batch of writes (gatherNap) is waited for with a nap instead: the
// reader sleeps out gatherIn in nanosleep(2), unless the batch is there
// already, and the mark stays cleared. Why: while a mark is set and not yet
// met, TCP acknowledges every second segment that comes, so that the
// sender is not held up for a window the reader has yet to open, and on
// loopback the client makes and takes each of those ACKs in its own send.
// A batch of 16 writes of 4 KiB comes in 16 segments; a batch of reads
// fits in one or two, and keeps the mark, which ends its wait as soon as
// it is there. With fio's 4 KiB writes at depth 32 (fioprobe.sh), the
// server sent fio 0.40 pure ACKs a write on the mark and 0.17 napping, and
// fio's CPU a write fell from 8.94 to 8.59 µs with one core each; 10
// alternating rounds each, one core each and cores shared, took the rate
// 1.04× in both (per round 0.90–1.28×), and 8 rounds of a server held to
// 0.3 of a core 1.01×. The nap lasts 50–100 µs (gatherWait, and the
// kernel's timer slack); where that is slower than not gathering, the
// trial turns gathering writes off (gatherTrial).
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
// arrived past the mark, before the reader had read the batch, woke that
// thread for nothing, at the client's expense: on loopback the
// client's send runs the wake-up. With fio's 4 KiB reads at depth 32 on
// two shared cores, 23 of every 32 wake-ups fio made of the server went
// to that thread (`perf record -g -e sched:sched_waking`), and hiding the
// socket took the rate from 89 to 97 thousand reads a second, writes from
// 90 to 105 thousand, with less server CPU per request (6 alternating
// rounds each). With one processor nothing sleeps in epoll_wait while the
// reader runs, and it changed nothing measurable.
//
// With gatherHold, and one of the sleepPlaces free, the thread keeps its
// processor while it waits (a raw ppoll; see lowMark.wait). A ppoll the
// runtime sees, after the process was idle, wakes the runtime's monitor
// thread (sysmon), which then polls every 20 µs for a while, and the
// processor may go to another thread that finds nothing to do. With fio's
// 4 KiB reads at depth 32 against a server held to 0.3 of a core, per
// request: context switches 0.29 → 0.08, futex calls 0.06 → 0.001,
// nanosleep (sysmon's) 0.10 → 0.01; and 32–37 → 47–52 thousand IOPS.
func (r *sockReader) gatherRead(fd uintptr) {
	hold := false
	if r.gatherHold {
		hold, _ = sleepPlace()
	}
	r.hide.hide(int(fd)) // see above; until readOnce shows it
	if r.gatherNap {
		r.mark.clear(int(fd))
		if inq, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err != nil || inq < r.gather {
			nap(r.gatherIn, hold)
		}
	} else {
		r.mark.wait(fd, r.gather, r.gatherIn, hold)
	}
	if hold {
		blockingConns.Add(-1)
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
// the runtime does not see (see lowMark.wait).
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
