//go:build linux

package nbd

import (
	"bytes"
	"encoding/binary"
	"os"
	"strconv"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pollHide takes a socket out of the Go runtime's epoll set while its
// reader sleeps in read(2), and puts it back before anyone waits for it on
// the runtime's network poller.
//
// Why: the runtime registers every socket edge-triggered, for reading and
// writing. While the reader sleeps in read(2), each segment that arrives
// still wakes a thread the runtime keeps asleep in epoll_wait for its idle
// processors; it finds nobody waiting for the socket and goes back to
// sleep. With two processors, that was two system calls and a context
// switch on the other core for each request at queue depth 1, and three
// for each 256 KiB write, on the core the client needs.
//
// How: the runtime has no call to unregister a descriptor short of closing
// it, so this does it with epoll_ctl on the runtime's epoll descriptor,
// found in /proc/self/fd. The registration's events and data (the runtime's
// pointer to its record of the socket) are read from that descriptor's
// /proc/self/fdinfo entry before the first removal and given back unchanged
// on re-adding, which also reports any readiness that came meanwhile, as
// edge-triggered registration does for a new descriptor. A failure to find
// or remove the registration leaves the socket registered, which costs the
// wake-ups and nothing else; a failure to re-add it ends the connection
// with the error (see show), as a wait on the poller would never end.
//
// The reader hides the socket when it enters blocking mode and shows it
// when it leaves, and hides it for a gathering read too (gatherRead),
// showing it before it next waits on the poller; a writer that finds the
// socket full shows it before it waits on the poller, and while a writer
// waits the socket is not hidden.
// Both run inside RawConn callbacks, while the runtime holds the descriptor
// open: a descriptor number that was closed and reused is never touched.
type pollHide struct {
	mu      sync.Mutex
	hidden  bool
	known   bool // ev holds the runtime's registration
	failed  bool // reading it failed: never hide
	ev      unix.EpollEvent
	waiters int // writers waiting on the poller
}

// runtimeEpoll is the runtime's epoll descriptor, found once: the
// process's only eventpoll descriptor, or -1 if it has none or several.
// readRegistration then checks that the socket is registered in it as the
// runtime registers sockets.
var runtimeEpoll = sync.OnceValue(func() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	found := -1
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err != nil || l != "anon_inode:[eventpoll]" {
			continue
		}
		if found >= 0 {
			return -1 // more than one: which is the runtime's is not known
		}
		found = fd
	}
	return found
})

// runtimeEpollInfo is the path of runtimeEpoll's fdinfo entry.
var runtimeEpollInfo = sync.OnceValue(func() string {
	return "/proc/self/fdinfo/" + strconv.Itoa(runtimeEpoll())
})

// newPollHide returns a pollHide for a new connection's socket, or nil if
// the runtime's epoll descriptor is not known. The search for it is made
// once, by the first connection, rather than in a request's path.
func newPollHide() *pollHide {
	if runtimeEpoll() < 0 {
		return nil
	}
	return new(pollHide)
}

// hide removes the socket fd from the runtime's epoll set, if it can.
func (h *pollHide) hide(fd int) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.hidden || h.failed || h.waiters > 0 {
		return
	}
	ep := runtimeEpoll()
	if !h.known {
		if ep < 0 || !readRegistration(fd, &h.ev) {
			h.failed = true
			return
		}
		h.known = true
	}
	if unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, fd, nil) == nil {
		h.hidden = true
	}
}

// show puts the socket back in the runtime's epoll set. If that fails
// (the kernel is out of memory, or of epoll watches), a wait on the poller
// would never end: the caller ends the connection with the error instead.
func (h *pollHide) show(fd int) error {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.showLocked(fd)
}

func (h *pollHide) showLocked(fd int) error {
	if !h.hidden {
		return nil
	}
	ev := h.ev
	if err := unix.EpollCtl(runtimeEpoll(), unix.EPOLL_CTL_ADD, fd, &ev); err != nil && err != unix.EEXIST {
		h.failed = true
		return os.NewSyscallError("epoll_ctl", err)
	}
	h.hidden = false
	return nil
}

// writerWaits shows the socket for a writer about to wait for room on the
// poller, and keeps it shown until writerDone.
func (h *pollHide) writerWaits(fd int) error {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.waiters++
	return h.showLocked(fd)
}

func (h *pollHide) writerDone() {
	if h == nil {
		return
	}
	h.mu.Lock()
	h.waiters--
	h.mu.Unlock()
}

// fdinfo holds the runtime epoll descriptor's /proc/self/fdinfo text,
// read whole: one buffer for the process, kept for the next connection, so
// that hiding a socket costs no allocation once the buffer has grown.
var fdinfo struct {
	sync.Mutex
	buf []byte
}

// readRegistration reads fd's registration in the runtime's epoll set from
// /proc/self/fdinfo: a line "tfd: FD events: HEX data: HEX ...".
func readRegistration(fd int, ev *unix.EpollEvent) bool {
	fdinfo.Lock()
	defer fdinfo.Unlock()
	f, err := unix.Open(runtimeEpollInfo(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(f)
	if fdinfo.buf == nil {
		fdinfo.buf = make([]byte, 0, 4096)
	}
	b := fdinfo.buf[:0]
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := unix.Read(f, b[len(b):cap(b)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false
		}
		if n == 0 {
			break
		}
		b = b[:len(b)+n]
	}
	fdinfo.buf = b[:0]
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		var tfd, events, data uint64
		line, ok := field(line, "tfd:", 10, &tfd)
		if !ok || tfd != uint64(fd) {
			continue
		}
		if line, ok = field(line, "events:", 16, &events); !ok || events > 0xffffffff {
			return false
		}
		if _, ok = field(line, "data:", 16, &data); !ok {
			return false
		}
		// What the runtime registers, as far as it can be checked: a wrong
		// data value given back would crash the runtime's poller.
		const runtimeEvents = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET
		if uint32(events)&runtimeEvents != runtimeEvents || data == 0 {
			return false
		}
		ev.Events = uint32(events)
		// The 8 bytes of epoll_data start at Fd on every Linux layout.
		binary.NativeEndian.PutUint64((*[8]byte)(unsafe.Pointer(&ev.Fd))[:], data)
		return true
	}
	return false
}

// field parses "NAME VALUE" at the start of s (after blanks) as a number
// in the given base, and returns the rest of s.
func field(s []byte, name string, base uint64, v *uint64) ([]byte, bool) {
	s = bytes.TrimLeft(s, " \t")
	if !bytes.HasPrefix(s, []byte(name)) {
		return s, false
	}
	s = bytes.TrimLeft(s[len(name):], " \t")
	n := 0
	*v = 0
	for ; n < len(s) && n < 16; n++ {
		d := uint64(16)
		switch c := s[n]; {
		case '0' <= c && c <= '9':
			d = uint64(c - '0')
		case 'a' <= c && c <= 'f':
			d = uint64(c-'a') + 10
		}
		if d >= base {
			break
		}
		*v = *v*base + d
	}
	return s[n:], n > 0 && (n == len(s) || s[n] == ' ' || s[n] == '\t')
}
