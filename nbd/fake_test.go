package nbd

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"syscall"

	"boardnbd/nbd/backend"
)

// memBackend is an in-memory Backend for tests. Blocks of holeBlock bytes
// that were never written (or were trimmed) are holes. failAt makes any
// request touching that offset fail with failErr.
type memBackend struct {
	mu      sync.Mutex
	data    []byte
	written []bool // per holeBlock
	info    backend.Info
	failAt  int64 // -1: never
	failErr error
	flushes int
	closed  bool
}

const holeBlock = 4096

func newMem(size int64) *memBackend {
	return &memBackend{
		data:    make([]byte, size),
		written: make([]bool, (size+holeBlock-1)/holeBlock),
		info:    backend.Info{CanTrim: true, CanExtents: true, CanFastZero: true, SharedCache: true},
		failAt:  -1,
	}
}

func (m *memBackend) fails(off, n int64) bool {
	return m.failAt >= 0 && off <= m.failAt && m.failAt < off+max(n, 1)
}

func (m *memBackend) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fails(off, int64(len(p))) {
		return 0, m.failErr
	}
	return copy(p, m.data[off:]), nil
}

func (m *memBackend) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fails(off, int64(len(p))) {
		return 0, m.failErr
	}
	m.mark(off, int64(len(p)), true)
	return copy(m.data[off:], p), nil
}

func (m *memBackend) mark(off, n int64, w bool) {
	for b := off / holeBlock; b*holeBlock < off+n; b++ {
		if w || (b*holeBlock >= off && (b+1)*holeBlock <= off+n) {
			m.written[b] = w
		}
	}
}

func (m *memBackend) Size() int64 { return int64(len(m.data)) }

func (m *memBackend) Flush() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flushes++
	return nil
}

func (m *memBackend) Trim(off, n int64) error { return m.Zero(off, n, 0) }

func (m *memBackend) Zero(off, n int64, f backend.ZeroFlags) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if f&backend.ZeroFast != 0 && !m.info.CanFastZero {
		return backend.ErrNotSupported
	}
	if m.fails(off, n) {
		return m.failErr
	}
	clear(m.data[off : off+n])
	m.mark(off, n, f&backend.ZeroNoHole != 0)
	return nil
}

func (m *memBackend) Extents(dst []backend.Extent, off, n int64) ([]backend.Extent, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fails(off, n) {
		return dst, m.failErr
	}
	for pos := off; pos < off+n; {
		b := pos / holeBlock
		end := min((b+1)*holeBlock, int64(len(m.data)))
		var fl backend.ExtentFlags
		if !m.written[b] {
			fl = backend.ExtentHole | backend.ExtentZero
		}
		if k := len(dst); k > 0 && dst[k-1].Flags == fl {
			dst[k-1].Length += end - pos
		} else {
			dst = append(dst, backend.Extent{Length: end - pos, Flags: fl})
		}
		pos = end
	}
	return dst, nil
}

func (m *memBackend) Info() backend.Info {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.info
}

func (m *memBackend) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}

// sharedExport serves one memBackend to every connection; Close is a no-op
// so the data survives connections.
type sharedBackend struct{ *memBackend }

func (sharedBackend) Close() error { return nil }

func memExport(name string, m *memBackend) *Export {
	return &Export{
		Name:        name,
		Description: "test export " + name,
		Open:        func(net.Addr) (backend.Backend, error) { return sharedBackend{m}, nil },
	}
}

var errInjected = errors.Join(errors.New("injected failure"), syscall.EIO)

// Accessors for tests: the server's goroutines touch the backend with no
// happens-before edge the race detector can see through a socket.

func (m *memBackend) with(f func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f()
}

func (m *memBackend) bytesAt(off, n int) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return bytes.Clone(m.data[off : off+n])
}

func (m *memBackend) allocated(block int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.written[block]
}

func (m *memBackend) flushCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.flushes
}
