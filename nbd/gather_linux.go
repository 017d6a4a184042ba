package nbd

import "golang.org/x/sys/unix"

// canGather says whether the socket's poll(2) follows its low-water mark,
// as gatherRead needs: a TCP socket's does, a Unix socket's does not.
func (r *sockReader) canGather() bool { return !r.lag.never }

// gatherRead reads on a non-blocking socket once r.gather bytes have come,
// or r.gatherIn has passed (see gatherState): with the low-water mark set
// to them, it sleeps in ppoll(2), then reads whatever is there without
// sleeping. It leaves the mark set for the next gathering read, but not
// when it read nothing: the reader then waits on the runtime's poller,
// whose readiness follows the mark too.
func (r *sockReader) gatherRead(fd uintptr) {
	r.met, r.gathered = false, 0
	if r.lag.lowat != r.gather && !r.lag.mark(int(fd), r.gather) {
		r.lag.unmark(int(fd))
	} else {
		r.lag.fds[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
		ts := unix.NsecToTimespec(int64(r.gatherIn))
		k, _ := unix.Ppoll(r.lag.fds[:], &ts, nil)
		r.met = k > 0
	}
	r.n, r.err = rawRead(fd, r.p)
	switch {
	case r.err == unix.EAGAIN:
		r.lag.unmark(int(fd))
	case r.err == nil:
		r.gathered = r.n
	}
}
