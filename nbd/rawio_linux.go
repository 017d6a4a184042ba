//go:build linux

package nbd

import (
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The socket's reads that cannot sleep (on a non-blocking socket, or with
// MSG_DONTWAIT in blocking mode: sockReader.tryFirst), and all its writes,
// are made as raw system calls, which the Go runtime does not see.
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
// server's CPU per GiB fell by a seventh. None of these calls ever waits:
// each copies what it can and returns, and the caller waits for the socket
// on the runtime's poller, or, in blocking mode, in a read the runtime
// sees.

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
	w.bufs = nil
	if err != nil {
		return err
	}
	if w.err != nil {
		return os.NewSyscallError("writev", w.err)
	}
	return nil
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
			return true
		}
		w.msg.Iov = &w.iov[0]
		w.msg.SetIovlen(len(w.iov))
		n, _, e := syscall.RawSyscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&w.msg)), sendFlags)
		switch e {
		case 0:
			w.advance(int(n))
		case syscall.EINTR:
		case syscall.EAGAIN:
			if !w.waited && w.hide != nil {
				w.waited = true
				if err := w.hide.writerWaits(int(fd)); err != nil {
					w.err = err
					return true
				}
			}
			return false
		default:
			w.err = e
			return true
		}
	}
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
