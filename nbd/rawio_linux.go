//go:build linux

package nbd

import (
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The socket's reads that cannot sleep (on a non-blocking socket, or with
// MSG_DONTWAIT in blocking mode: sockReader.tryFirst), and all its writes
// (but a spliced reply's in blocking mode: spliceOnce), are made as raw
// system calls, which the Go runtime does not see.
//
// Why: when a system call lasts more than a few tens of microseconds and
// no other processor is idle, as on a one-core board, the runtime's monitor
// thread hands the caller's processor to another thread, and it keeps
// waking every 20 µs while that happens again and again. Copying a large
// read reply into the socket, or a large write's payload out of it, lasts
// that long, and on one core each hand-off is context switches and wake-ups
// for nothing: no other thread could have run meanwhile. With the replies'
// writes and the socket reads raw, and storage reads raw while the reader
// runs them from memory (backend.CachedReader), 1 MiB reads at depth 8 on
// one core went from 2.4 to 0.2 context switches per request, and the
// server's CPU per GiB fell by a seventh. Storage writes the reader runs
// from memory are raw too (backend.CachedWriter). None of the socket's
// calls ever waits: each copies what it can and returns, and the caller
// waits for the socket on the runtime's poller, or, in blocking mode, in a
// read the runtime sees. A storage call can wait (see CachedReader).

// rawRead is read(2) on a non-blocking descriptor.
func rawRead(fd uintptr, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

// sendFlags make every send non-blocking, whatever the socket's mode: a raw
// system call must never sleep. In depth-1 blocking mode (sockread_unix.go)
// a writev would sleep in the kernel when the socket is full, up to the
// send timeout and again after each partial write, on a processor the
// runtime thinks is running Go code: nothing could preempt it, and a
// garbage collection waited for it, stopping every other goroutine. A full
// socket instead sends the writer to the runtime's poller, which lets the
// processor go.
const sendFlags = syscall.MSG_DONTWAIT | syscall.MSG_NOSIGNAL

// maxIOV is the most buffers one writev takes (the kernel's UIO_MAXIOV).
const maxIOV = 1024

// sockWriter writes replies to a TCP or Unix socket with raw sendmsg(2).
type sockWriter struct {
	rc      syscall.RawConn
	writeFD func(fd uintptr) bool // writeOnce, bound once: no allocation per write
	bufs    [][]byte              // what is left to write
	iov     []unix.Iovec
	msg     unix.Msghdr
	err     error
	hide    *pollHide // the sockReader's: shown while this waits on the poller
	waited  bool
	// sockBlocking is the sockReader's: whether the socket is in blocking
	// mode. Nil for a socket with no sockReader (tests).
	sockBlocking *atomic.Bool

	// After bufs, a spliced reply's bytes still in its pipe (writeSpliced).
	pipeFD   int
	piped    int
	pipeMore bool // more of the reply stream follows the pipe's bytes at once
}

// newSockWriter returns a sockWriter for nc, or nil if nc is not a socket.
func newSockWriter(nc any) *sockWriter {
	rc := rawConnOf(nc)
	if rc == nil {
		return nil
	}
	w := &sockWriter{rc: rc}
	w.writeFD = w.writeOnce
	return w
}

// writev writes every byte of bufs, whose elements it may reslice.
func (w *sockWriter) writev(bufs [][]byte) error {
	w.bufs, w.err = bufs, nil
	err := w.rc.Write(w.writeFD)
	if w.waited {
		w.waited = false
		w.hide.writerDone()
	}
	w.bufs, w.piped = nil, 0
	if err != nil {
		return err
	}
	if w.err != nil {
		return os.NewSyscallError("writev", w.err)
	}
	return nil
}

// writeSpliced writes every byte of bufs, then n bytes from the pipe whose
// read end is pipeFD (see splice_linux.go). more says that more of the
// reply stream follows at once, so the socket need not send a partial
// segment at the end.
func (w *sockWriter) writeSpliced(bufs [][]byte, pipeFD, n int, more bool) error {
	w.pipeFD, w.piped, w.pipeMore = pipeFD, n, more
	return w.writev(bufs)
}

// writeOnce is the function RawConn.Write calls with the descriptor: it
// writes until done or the socket is full, and returns false to wait for
// room.
func (w *sockWriter) writeOnce(fd uintptr) bool {
	for {
		w.iov = w.iov[:0]
		for _, b := range w.bufs {
			if len(w.iov) == maxIOV {
				break
			}
			if len(b) > 0 {
				v := unix.Iovec{Base: &b[0]}
				v.SetLen(len(b))
				w.iov = append(w.iov, v)
			}
		}
		if len(w.iov) == 0 {
			if w.piped > 0 {
				return w.spliceOnce(fd)
			}
			return true
		}
		w.msg.Iov = &w.iov[0]
		w.msg.SetIovlen(len(w.iov))
		flags := uintptr(sendFlags)
		if w.piped > 0 {
			flags |= syscall.MSG_MORE // the pipe's bytes follow at once
		}
		n, _, e := syscall.RawSyscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&w.msg)), flags)
		switch e {
		case 0:
			w.advance(int(n))
		case syscall.EINTR:
		case syscall.EAGAIN:
			return w.full(fd)
		default:
			w.err = e
			return true
		}
	}
}

// spliceOnce moves the pipe's bytes into the socket until they are all
// sent or the socket is full; it returns false to wait for room.
//
// splice(2) has no per-call flag like the sends' MSG_DONTWAIT: a socket in
// blocking mode (depth 1, sockread_unix.go) would sleep in it, up to its
// send timeout, when full. So the splice is raw only while the socket is
// not in blocking mode. (Should the reader switch it at that very moment,
// the sleep is bounded by the send timeout, hotWait.)
func (w *sockWriter) spliceOnce(fd uintptr) bool {
	for w.piped > 0 {
		flags := uintptr(unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK)
		if w.pipeMore {
			flags |= unix.SPLICE_F_MORE
		}
		call := syscall.Syscall6
		if w.sockBlocking != nil && !w.sockBlocking.Load() {
			call = syscall.RawSyscall6
		}
		n, _, e := call(unix.SYS_SPLICE, uintptr(w.pipeFD), 0, fd, 0, uintptr(w.piped), flags)
		switch {
		case e == syscall.EINTR:
		case e == syscall.EAGAIN:
			return w.full(fd)
		case e != 0:
			w.err = e
			return true
		case n == 0:
			w.err = syscall.EPIPE // the pipe had fewer bytes than it should: a bug
			return true
		default:
			w.piped -= int(n)
		}
	}
	return true
}

// full is a write's answer to a full socket: false, to wait for room on
// the runtime's poller, with the socket shown to it (pollHide).
func (w *sockWriter) full(fd uintptr) bool {
	if !w.waited && w.hide != nil {
		w.waited = true
		if err := w.hide.writerWaits(int(fd)); err != nil {
			w.err = err
			return true
		}
	}
	return false
}

// advance drops the first n bytes written from w.bufs.
func (w *sockWriter) advance(n int) {
	for len(w.bufs) > 0 && n >= len(w.bufs[0]) {
		n -= len(w.bufs[0])
		w.bufs = w.bufs[1:]
	}
	if n > 0 {
		w.bufs[0] = w.bufs[0][n:]
	}
}

// rawReadNow is recv(2) with MSG_DONTWAIT: it never sleeps, whatever the
// socket's mode.
func rawReadNow(fd uintptr, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, e := syscall.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)),
		syscall.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}
