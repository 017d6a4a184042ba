//go:build linux

package nbd

import (
	"bytes"
	"net"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// serverFD returns the descriptor of the server's only connection.
func serverFD(t *testing.T, s *Server) int {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.conns) != 1 {
		t.Fatalf("server has %d connections, want 1", len(s.conns))
	}
	fd := -1
	for c := range s.conns {
		rawConnOf(c.raw).Control(func(d uintptr) { fd = int(d) })
	}
	return fd
}

// inRuntimePoller says whether fd is in the runtime's epoll set, read from
// /proc with a parser of its own, not the one under test.
func inRuntimePoller(t *testing.T, fd int) bool {
	t.Helper()
	ep := runtimeEpoll()
	if ep < 0 {
		t.Fatal("the runtime's epoll descriptor was not found")
	}
	b, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(ep))
	if err != nil {
		t.Fatal(err)
	}
	return regexp.MustCompile(`(?m)^tfd:\s+` + strconv.Itoa(fd) + `\s`).Match(b)
}

// readRegistration finds what the runtime registered: a socket
// edge-triggered for reading and writing, with its own data.
func TestReadRegistration(t *testing.T) {
	_, a := tcpPair(t)
	_, b := tcpPair(t)
	var evs [2]unix.EpollEvent
	for i, c := range []net.Conn{a, b} {
		var ok bool
		rawConnOf(c).Control(func(fd uintptr) { ok = readRegistration(int(fd), &evs[i]) })
		if !ok {
			t.Fatalf("connection %d: registration not found", i)
		}
		const want = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET
		if evs[i].Events&want != want {
			t.Errorf("connection %d: events %#x, want %#x set", i, evs[i].Events, uint32(want))
		}
	}
	if evs[0].Fd == evs[1].Fd && evs[0].Pad == evs[1].Pad {
		t.Errorf("two sockets registered with the same data %#x %#x", evs[0].Fd, evs[0].Pad)
	}
	var ev unix.EpollEvent
	if readRegistration(1<<20, &ev) {
		t.Error("found a registration for a descriptor that is not open")
	}
	// Far more registrations than the first 4 KiB of the file show.
	var last net.Conn
	for range 100 {
		_, last = tcpPair(t)
	}
	var ok bool
	rawConnOf(last).Control(func(fd uintptr) { ok = readRegistration(int(fd), &ev) })
	if !ok {
		t.Error("the last of 200 more sockets: registration not found")
	}

	for _, tc := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"tfd: 12 events", 12, true},
		{"tfd:       7 events", 7, true},
		{"tfd: 12x events", 0, false},
		{"tfd: events", 0, false},
		{"fd: 12", 0, false},
	} {
		var v uint64
		_, ok := field([]byte(tc.in), "tfd:", 10, &v)
		if ok != tc.ok || ok && v != tc.want {
			t.Errorf("field(%q) = %d, %v; want %d, %v", tc.in, v, ok, tc.want, tc.ok)
		}
	}
	var v uint64
	if rest, ok := field([]byte("data:  c000123456789abc  pos:0"), "data:", 16, &v); !ok || v != 0xc000123456789abc || !bytes.HasPrefix(bytes.TrimSpace(rest), []byte("pos:")) {
		t.Errorf("field(data) = %#x, %v, rest %q", v, ok, rest)
	}
}

// While the reader sleeps in read(2) its socket is out of the runtime's
// epoll set; when the client goes quiet it is back in, and a request that
// comes after the reader parked on the poller wakes it.
func TestSleepingReaderLeavesTheRuntimePoller(t *testing.T) {
	const wait = 300 * time.Millisecond
	lengthenHotWait(t, wait, 2)
	s := &Server{}
	addr := startServer(t, s, memExport("disk", newMem(testSize)))
	tc := dialFixed(t, addr)
	tc.goExport("disk", false)
	fd := serverFD(t, s)
	if !inRuntimePoller(t, fd) {
		t.Fatal("a new connection's socket is not in the runtime's epoll set")
	}

	tc.fastStreak(0)
	tc.calmDown(t, "at depth 1")
	if inRuntimePoller(t, fd) {
		t.Fatal("the socket stayed in the runtime's epoll set while its reader sleeps in read(2)")
	}
	tc.smallRead(2)

	waitBlocking(t, 0, 2*wait, "after the client went quiet")
	if !inRuntimePoller(t, fd) {
		t.Fatal("the socket is not back in the runtime's epoll set after its reader left blocking mode")
	}
	time.Sleep(wait / 4) // the reader parks on the poller
	tc.c.SetDeadline(time.Now().Add(2 * time.Second))
	tc.smallRead(3)
}
