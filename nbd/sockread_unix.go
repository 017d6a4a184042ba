//go:build unix

package nbd

import (
	"io"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// hotWait bounds how long a thread waits in the kernel for a client at
// queue depth 1 before the connection parks on the runtime's network
// poller instead (see sockReader). Tests lengthen it.
var hotWait = time.Millisecond

// yieldEvery is how often a reader in blocking mode yields to the
// scheduler: well inside the 10 ms after which the runtime treats a
// goroutine that has not been through the scheduler as running too long.
const yieldEvery = 4 * time.Millisecond

// blockingConns counts the sleepPlaces taken, process-wide: connections
// whose socket is in blocking mode, and gathering waits that keep their
// processor (gatherRead).
var blockingConns atomic.Int32

// sockReader reads a TCP or Unix socket for the reader goroutine. While the
// reader says the client is at queue depth 1, or streams writes (lone; see
// conn.smallWrites), it switches the socket to blocking mode with a
// hotWait receive timeout, so the thread sleeps in read(2) until the next
// request arrives, as a thread-per-connection C server does. The rest of a
// write's payload it reads with MSG_WAITALL: one wake-up when all of it has
// come, rather than one per segment and a trip through the poller between.
// Over TCP, for a client that pipelines bulk writes, it waits a little
// longer, for the next request's header too (lagState, lag_linux.go); for
// one that keeps many small reads in flight, for a batch of them
// (gatherState).
//
// Why: parking on the network poller between requests leaves the process
// idle, and at depth 1 that costs more than the request: the poller's
// epoll_wait sleep and wake-up, the runtime's monitor thread (sysmon) put to
// sleep and woken by the next system call, and a failed read before every
// park. A thread asleep in read(2) keeps its processor and needs none of it.
// On Linux the socket also leaves the runtime's epoll set meanwhile, so that
// its arrivals wake nobody else (pollhide_linux.go).
//
// Limits: it holds an OS thread and its processor while it sleeps, so the
// sleep is short (hotWait; the read then fails with EAGAIN and the
// connection parks on the poller as usual) and only so many connections are
// in blocking mode at once (sleepPlaces). On Linux replies never sleep in
// the kernel (rawio_linux.go); elsewhere writes in blocking mode sleep at
// most hotWait too (SO_SNDTIMEO) before they fall back to the poller. A
// deadline, Close or Shutdown from another goroutine takes effect when the
// sleep ends, within hotWait.
type sockReader struct {
	rc       syscall.RawConn
	readFD   func(fd uintptr) bool // readOnce, bound once: no allocation per read
	p        []byte                // readOnce's buffer and results
	n        int
	err      error
	lone     bool     // set by the reader before each read: it may sleep in read(2)
	tryFirst bool     // set with lone: bytes are likely there; read without sleeping first
	payload  int      // bytes of a write's payload still to come, while the reader reads one
	lag      lagState // whether the rest of a bulk write's payload is read late (lag_linux.go)
	mark     lowMark  // the socket's low-water mark, for lag and gathering (lowmark_linux.go)
	// blocking says the socket is in blocking mode and counted in
	// blockingConns. Only the reader changes it; the connection's
	// sockWriter reads it too.
	blocking atomic.Bool
	alone    bool      // blocking on the one processor, which other connections need
	timeouts bool      // SO_RCVTIMEO and SO_SNDTIMEO are set
	hide     *pollHide // shared with the connection's sockWriter
	yielded  time.Time

	// A gathering read (gatherRead, gather_linux.go), asked for by the
	// reader before a read that may wait: it waits up to gatherIn for
	// gather bytes, on the low-water mark, or in a nap (gatherNap); a
	// probe (gatherProbe) waits on the mark without holding its
	// processor. Its result is the bytes that came: read, and still in
	// the socket after a read that filled the buffer. A read that did not
	// gather leaves it 0.
	gather      int
	gatherIn    time.Duration
	gatherProbe bool
	gatherNap   bool
	gathered    int
}

// rawConnOf returns nc's descriptor access, or nil if nc is not a socket.
func rawConnOf(nc any) syscall.RawConn {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// newSockReader returns a sockReader for nc, or nil if nc is not a socket.
func newSockReader(nc any) *sockReader {
	rc := rawConnOf(nc)
	if rc == nil {
		return nil
	}
	r := &sockReader{rc: rc, hide: newPollHide()}
	_, tcp := nc.(*net.TCPConn)
	r.mark.never = !tcp // poll(2) on a Unix socket ignores the low-water mark
	r.readFD = r.readOnce
	return r
}

func (r *sockReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.p = p
	rerr := r.rc.Read(r.readFD)
	n, err := r.n, r.err
	r.p, r.err = nil, nil
	switch {
	case rerr != nil:
		return 0, rerr
	case err != nil:
		return 0, os.NewSyscallError("read", err)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// readOnce is the function RawConn.Read calls with the descriptor: it reads
// into r.p, and returns false to wait on the poller.
func (r *sockReader) readOnce(fd uintptr) bool {
	r.gathered = 0
	var err error
	if r.alone && openConns.Load() > 1 {
		err = r.setBlocking(int(fd), false) // another connection needs the processor
	} else if r.lone != r.blocking.Load() {
		err = r.setBlocking(int(fd), r.lone)
	}
	if err != nil {
		r.n, r.err = 0, err
		return true
	}
	done := false
	if r.gather > 0 && !r.blocking.Load() {
		r.gatherRead(fd)
		done = r.err != unix.EINTR
	}
	r.gather = 0
	rest := r.blocking.Load() && r.payload > 0 && len(r.p) <= r.payload
	if r.blocking.Load() && (r.tryFirst || r.mark.v != 0 && !rest) {
		// Bytes that are there cost no sleep and no system call the
		// runtime sees; only when none are does the reader sleep below.
		// (After a lagging read the next request's header is there, and a
		// read that sleeps would wait for the low-water mark.)
		r.n, r.err = rawReadNow(fd, r.p)
		done = r.err != unix.EAGAIN && r.err != unix.EINTR
	}
	if !done && r.mark.v != 0 && !(rest && r.lag.on) {
		r.mark.clear(int(fd)) // a read that sleeps must wake for any byte
	}
	for !done {
		if rest && r.lag.on {
			r.n, r.err = r.lag.read(&r.mark, fd, r.p)
		} else if rest {
			// The rest of a payload, straight into place: sleep until all
			// of it has come (or the receive timeout), not for each segment.
			r.n, _, r.err = unix.Recvfrom(int(fd), r.p, unix.MSG_WAITALL)
		} else if r.blocking.Load() {
			r.n, r.err = unix.Read(int(fd), r.p) // it sleeps: let the runtime see it
		} else {
			r.n, r.err = rawRead(fd, r.p) // see rawio_linux.go
		}
		done = r.err != unix.EINTR
	}
	if r.err != unix.EAGAIN {
		if r.n > 0 && r.payload > 0 {
			// Keep it exact: after a short read the buffered reader may
			// ask for its whole buffer, more than the payload's rest, and
			// MSG_WAITALL would then wait for bytes the client has not sent.
			r.payload = max(r.payload-r.n, 0)
		}
		return true
	}
	if r.blocking.Load() { // the receive timeout ran out: the client is quiet
		r.lone = false
		if err := r.setBlocking(int(fd), false); err != nil {
			r.n, r.err = 0, err
			return true
		}
	} else if err := r.hide.show(int(fd)); err != nil {
		// A gathering read hid the socket (gatherRead); it must be back
		// in the poller's set before the reader waits there.
		r.n, r.err = 0, err
		return true
	}
	return false
}

// sleepPlaces says how many connections may be in blocking mode at once.
//
// With several processors, GOMAXPROCS-1: the runtime always has a free one
// for everything else, and never has to take one back from a sleeping
// reader. With one processor, one, but only while the process has no other
// connection. A sleeping reader holds the one processor: the runtime's
// network poller does not run, and another connection's requests would wait
// for that reader to yield or for the runtime's monitor thread, up to 10 ms
// or more. A connection alone on a one-core board keeps nobody waiting,
// and on the poller each of its requests costs twice the CPU: the process
// goes idle between requests, and the monitor thread is put to sleep and
// woken again on the same core.
func sleepPlaces() (places int32, alone bool) {
	if procs := int32(runtime.GOMAXPROCS(0)); procs > 1 {
		return procs - 1, false
	}
	if openConns.Load() == 1 {
		return 1, true
	}
	return 0, false
}

// sleepPlace takes one of the sleepPlaces, if one is free; blockingConns
// counts it until the taker gives it back.
func sleepPlace() (ok, alone bool) {
	places, alone := sleepPlaces()
	if blockingConns.Add(1) > places {
		blockingConns.Add(-1)
		return false, false
	}
	return true, alone
}

// setBlocking switches the socket's mode. Switching to blocking mode needs
// one of the sleepPlaces; without one the socket stays non-blocking. In
// blocking mode the socket is out of the runtime's poller (pollHide); the
// error is that of putting it back, after which the reader cannot wait.
func (r *sockReader) setBlocking(fd int, on bool) error {
	if on {
		ok, alone := sleepPlace()
		if !ok {
			return nil
		}
		if !r.timeouts {
			tv := unix.NsecToTimeval(int64(hotWait))
			if unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv) != nil ||
				unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv) != nil {
				blockingConns.Add(-1)
				return nil
			}
			r.timeouts = true
		}
		if unix.SetNonblock(fd, false) != nil {
			blockingConns.Add(-1)
			return nil
		}
		r.blocking.Store(true)
		r.alone = alone
		r.hide.hide(fd)
		return nil
	}
	// Even if this fails the socket must not be counted: a blocking socket
	// still sleeps at most hotWait.
	r.mark.clear(fd) // the poller's readiness follows the mark too
	err := r.hide.show(fd)
	unix.SetNonblock(fd, true)
	r.blocking.Store(false)
	r.alone = false
	blockingConns.Add(-1)
	return err
}

// tick is called by the reader after each request arrives. In blocking mode
// the reader goes from one system call to the next without passing through
// the scheduler, and after 10 ms of that the runtime's monitor thread
// (sysmon) takes its processor away while it sleeps in read(2): the read then
// returns to no processor, often on another thread, and sysmon, having taken
// one, polls every 20 µs for the next millisecond. A yield every yieldEvery
// avoids all of it, at the cost of one pass through the scheduler.
func (r *sockReader) tick(now time.Time) {
	if r.blocking.Load() && now.Sub(r.yielded) >= yieldEvery {
		r.yielded = now
		runtime.Gosched()
	}
}

// release gives back the connection's place when it ends.
func (r *sockReader) release() {
	if r != nil && r.blocking.Load() {
		r.blocking.Store(false)
		r.alone = false
		blockingConns.Add(-1)
	}
}
