package nbd

import "golang.org/x/sys/unix"

// gatherRead reads on a non-blocking socket once r.gather bytes have come,
// or r.gatherIn has passed (see gatherState): it waits on the low-water
// mark, then reads whatever is there without sleeping. It leaves the mark
// set for the next gathering read, but not when it read nothing: the
// reader then waits on the runtime's poller.
func (r *sockReader) gatherRead(fd uintptr) {
	r.met, r.gathered = false, 0
	if timedOut, ok := r.mark.wait(fd, r.gather, r.gatherIn); ok {
		r.met = !timedOut
	}
	r.n, r.err = rawRead(fd, r.p)
	switch {
	case r.err == unix.EAGAIN:
		r.mark.clear(int(fd))
	case r.err == nil:
		r.gathered = r.n
	}
}
