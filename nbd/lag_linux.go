package nbd

import (
	"time"

	"golang.org/x/sys/unix"
)

// lagWait bounds how long lagState.read waits for the next request's header
// once a payload's rest is there. It is what the last write of a burst
// pays; tests lengthen it.
var lagWait = 100 * time.Microsecond

// Misses put the lagging read off for lagBackoffMin payloads, doubling with
// each miss in a row up to lagBackoffMax.
const (
	lagBackoffMin = 16
	lagBackoffMax = 1024
)

// lagState makes the reader lag a little behind a client that streams bulk
// writes and sends each request before the last one's reply: the rest of a
// payload is read only once the next request's header has come after it,
// or after lagWait.
//
// Why: the blocking MSG_WAITALL read of a payload's rest is woken by the
// kernel for every segment that arrives, and each wake-up of a sleeping
// reader costs the sender too: on loopback the client's send does it. Once
// the reader has caught up with the client it is woken that way for every
// segment of every write. With a low-water mark (SO_RCVLOWAT) of the rest
// plus a header, it sleeps in ppoll(2) until all of it has come, reads the
// rest without sleeping, and finds the next header there: one wake-up per
// write. A mark of just the rest is not enough: the reader then catches up
// again and sleeps for the header, woken once more per write.
//
// A read of the rest with MSG_WAITALL may not sleep with the mark set: the
// bytes it copies before sleeping no longer count toward the mark, so it
// would sleep to the receive timeout with everything there. So the mark is
// taken away before any read that can sleep (lowMark.clear), and the rest
// is read without sleeping after the ppoll.
//
// A miss ends the lag for a while (backoff): the rest came but the header
// did not (a burst ended, or the client waits for each reply), or the rest
// itself took longer than lagWait (a link slower than the loopback: its
// segments come far apart and the lag would save nothing).
type lagState struct {
	on      bool // the payload being read lags
	off     int  // payloads to go before lagging again
	backoff int
}

// begin is called before each payload's read: bulk says it is a large
// write's in a stream of them, read in blocking mode from a socket that
// can wait on its low-water mark.
func (l *lagState) begin(bulk bool) {
	if l.off > 0 {
		l.off--
	}
	l.on = bulk && l.off == 0
}

// miss puts lagging off.
func (l *lagState) miss() {
	l.on = false
	l.backoff = min(max(2*l.backoff, lagBackoffMin), lagBackoffMax)
	l.off = l.backoff
}

// read reads p, the rest of a payload, on a socket in blocking mode: once
// the next request's header has come after it, or lagWait.
func (l *lagState) read(m *lowMark, fd uintptr, p []byte) (int, error) {
	timedOut, ok := m.wait(fd, len(p)+requestLen, lagWait, false)
	if !ok {
		l.miss()
		return l.readRest(m, fd, p, 0)
	}
	n, err := rawReadNow(fd, p)
	switch {
	case err == unix.EAGAIN:
		n = 0
	case err != nil:
		return 0, err
	case n == len(p):
		if timedOut {
			l.miss() // all of it, but no next request
		} else {
			l.backoff = 0
		}
		return n, nil
	}
	l.miss() // the rest is slow to come
	return l.readRest(m, fd, p, n)
}

// readRest reads p[n:] the usual way, with MSG_WAITALL and no mark.
func (l *lagState) readRest(m *lowMark, fd uintptr, p []byte, n int) (int, error) {
	m.clear(int(fd))
	k, _, err := unix.Recvfrom(int(fd), p[n:], unix.MSG_WAITALL)
	if k > 0 {
		n += k
	}
	if n > 0 {
		return n, nil // the error, if any, comes again on the next read
	}
	return 0, err
}
