//go:build linux

package nbd

import (
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// A large read's reply is spliced: the storage moves the bytes into a pipe
// as references to its cached pages (backend.PipeReader), and the reply's
// writer moves them on from the pipe into the socket the same way
// (sockWriter.writeSpliced). The server then copies none of the data. With
// pread and a write it copied every byte twice, out of the page cache and
// into the socket, and on sequential reads those two copies were half of
// its CPU time.
//
// The pipe is filled before the reply's header is written, so a storage
// error is known in time for an error reply, as with pread. A pipe holds
// pipeSize bytes; the rest of a larger read goes through the buffer as
// before and is sent after the pipe's bytes.
//
// The pages in a pipe are the page cache's own, so a write to the same
// range that lands before they are sent shows in the reply. That is a
// write in flight at the same time as the read, whose outcome NBD leaves
// undefined: a client cannot have seen the reply before it is sent.

// pipeSize is the largest capacity asked for a pipe: the default of
// fs.pipe-max-size, the most an unprivileged process may ask for. A pipe
// is made as large as the read it is first used for, within it, and grown
// when a later read needs more.
const pipeSize = 1 << 20

// pipeBudget bounds the capacity of all the pipes open in the process, and
// so their descriptors. It is the kernel's default limit for one user
// (fs.pipe-user-pages-soft, 16384 pages): past it, an unprivileged
// process's new pipes get two pages each, and growing one fails. A read
// that finds the budget spent is read into its buffer as before.
const pipeBudget = 64 << 20

// pipeBytes is the capacity of the pipes open in the process.
var pipeBytes atomic.Int64

// maxFreeBytes bounds the capacity of the empty pipes a connection keeps
// for its next large reads, a quarter of the budget: a copy's 64 reads of
// 256 KiB in flight, or 16 of 1 MiB. More are closed as their replies are
// sent.
const maxFreeBytes = pipeBudget / 4

// pipeSizeFor is the capacity of a new pipe for a read of n bytes: the
// smallest power of two from spliceMin to pipeSize that holds it.
func pipeSizeFor(n int) int {
	size := spliceMin
	for size < n && size < pipeSize {
		size *= 2
	}
	return size
}

// pipe is a pipe's two ends, both non-blocking, and its capacity.
type pipe struct{ r, w, size int }

// newPipe makes a pipe of at least size bytes, within the budget.
func newPipe(size int) *pipe {
	var fds [2]int
	if unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK) != nil {
		return nil
	}
	p := &pipe{r: fds[0], w: fds[1]}
	if got, err := unix.FcntlInt(uintptr(p.w), unix.F_GETPIPE_SZ, 0); err == nil {
		p.size = got
		pipeBytes.Add(int64(got))
	}
	if p.size < size && !p.grow(size) {
		p.close()
		return nil
	}
	return p
}

// grow makes p hold at least size bytes, if the budget allows.
func (p *pipe) grow(size int) bool {
	if pipeBytes.Add(int64(size-p.size)) > pipeBudget {
		pipeBytes.Add(int64(p.size - size))
		return false
	}
	got, err := unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, size)
	if err != nil {
		got = p.size
	}
	pipeBytes.Add(int64(got - size))
	p.size = got
	return got >= size
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
	pipeBytes.Add(-int64(p.size))
}

// pipePool is one connection's pipes for spliced replies. It knows the
// pipes it has handed out too, so that closing the connection closes them
// even if a request that held one panicked and never gave it back: each
// is two descriptors and a share of pipeBudget.
type pipePool struct {
	off       atomic.Bool // the storage cannot splice, or pipes cannot be had
	mu        sync.Mutex
	free      []*pipe
	freeBytes int
	out       []*pipe // handed out by get, not yet put back
	closed    bool
}

// get returns an empty pipe for a read of n bytes, as large as the read
// or pipeSize, or nil if the reply is not to be spliced.
func (pp *pipePool) get(n int) *pipe {
	if pp.off.Load() {
		return nil
	}
	size := pipeSizeFor(n)
	pp.mu.Lock()
	var p *pipe
	if k := len(pp.free); k > 0 {
		p = pp.free[k-1]
		pp.free = pp.free[:k-1]
		pp.freeBytes -= p.size
		pp.out = append(pp.out, p)
	}
	pp.mu.Unlock()
	if p == nil {
		if p = newPipe(size); p == nil {
			return nil
		}
		pp.mu.Lock()
		pp.out = append(pp.out, p)
		pp.mu.Unlock()
	}
	if p.size < size && !p.grow(size) && p.size < spliceMin {
		pp.put(p, true)
		return nil
	}
	return p
}

// put takes back a pipe that get handed out: to reuse if empty, else to
// close. One that closeAll has closed already is left alone.
func (pp *pipePool) put(p *pipe, empty bool) {
	pp.mu.Lock()
	i := slices.Index(pp.out, p)
	if i < 0 {
		pp.mu.Unlock()
		return
	}
	last := len(pp.out) - 1
	pp.out[i], pp.out[last] = pp.out[last], nil
	pp.out = pp.out[:last]
	if empty && !pp.closed && pp.freeBytes+p.size <= maxFreeBytes {
		pp.free = append(pp.free, p)
		pp.freeBytes += p.size
		p = nil
	}
	pp.mu.Unlock()
	if p != nil {
		p.close()
	}
}

// closeAll closes the pool's pipes, those handed out and not put back
// included; a pipe put back after is closed already, or is closed then.
func (pp *pipePool) closeAll() {
	pp.mu.Lock()
	pp.closed = true
	pipes := append(pp.free, pp.out...)
	pp.free, pp.freeBytes, pp.out = nil, 0, nil
	pp.mu.Unlock()
	for _, p := range pipes {
		p.close()
	}
}

// disable stops splicing on the connection: its storage cannot.
func (pp *pipePool) disable() { pp.off.Store(true) }
