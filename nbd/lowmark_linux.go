package nbd

import (
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// lowMark is the socket's receive low-water mark (SO_RCVLOWAT) as the
// reader set it. Two waits use it: a bulk write's lagging read (lagState)
// and a gathering read that does not nap (gatherState). Whoever sets it
// must clear it before any wait that should end at the first byte: a read
// that sleeps, or a wait on the runtime's poller, whose readiness follows
// the mark too.
type lowMark struct {
	v     int  // as set; 0 for the default
	never bool // the socket's poll(2) ignores the mark: it is not TCP
	fds   [1]unix.PollFd
}

// canMark says whether waits on the mark work on this socket.
func (r *sockReader) canMark() bool { return !r.mark.never }

// set sets the mark to v bytes, and says whether the kernel took all of it
// (it caps the mark at half its largest receive buffer).
func (m *lowMark) set(fd, v int) bool {
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, v) != nil {
		return false
	}
	m.v = v
	got, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT)
	return err == nil && got >= v
}

// clear gives the socket back its default mark.
func (m *lowMark) clear(fd int) {
	if m.v != 0 {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1)
		m.v = 0
	}
}

// wait sets the mark to v bytes and sleeps in ppoll(2) until that many are
// there, or d has passed (timedOut). It leaves the mark set; if the kernel
// would not take it, it clears it and does not wait (ok false). With hold,
// the ppoll is a raw system call, which the runtime does not see: the
// thread keeps its processor while it sleeps.
func (m *lowMark) wait(fd uintptr, v int, d time.Duration, hold bool) (timedOut, ok bool) {
	if m.v != v && !m.set(int(fd), v) {
		m.clear(int(fd))
		return false, false
	}
	m.fds[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	ts := unix.NsecToTimespec(int64(d))
	for {
		// A signal (the runtime preempts with them) ends the wait early;
		// Linux's ppoll leaves the time still to wait in ts.
		k, err := m.ppoll(&ts, hold)
		if err != unix.EINTR {
			return k == 0 && err == nil, true
		}
	}
}

// ppoll waits for m.fds as ppoll(2) does; with hold, as a raw system call.
func (m *lowMark) ppoll(ts *unix.Timespec, hold bool) (int, error) {
	if !hold {
		return unix.Ppoll(m.fds[:], ts, nil)
	}
	k, _, e := syscall.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&m.fds[0])), 1,
		uintptr(unsafe.Pointer(ts)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(k), nil
}
