package backend

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

// memBackend is a Backend in memory for testing wrappers. Blocks of
// memBlock bytes that were never written, or were trimmed or zeroed, are
// holes; it records the calls it gets.
type memBackend struct {
	mu     sync.Mutex
	data   []byte
	alloc  []bool // per memBlock
	info   Info
	calls  []string
	closed bool
	fail   error // returned by every call if set
}

const memBlock = 512

// hole is how a backend reports a run that is not allocated.
const hole = ExtentHole | ExtentZero

func newMem(size int64, info Info) *memBackend {
	return &memBackend{data: make([]byte, size), alloc: make([]bool, (size+memBlock-1)/memBlock), info: info}
}

func (m *memBackend) record(format string, args ...any) error {
	m.calls = append(m.calls, fmt.Sprintf(format, args...))
	if m.closed {
		return errors.New("mem: closed")
	}
	return m.fail
}

func (m *memBackend) check(off, length int64) error {
	return checkRange("mem", off, length, int64(len(m.data)))
}

func (m *memBackend) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.record("ReadAt(%d, %d)", off, len(p)); err != nil {
		return 0, err
	}
	if off >= int64(len(m.data)) {
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memBackend) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.record("WriteAt(%d, %d)", off, len(p)); err != nil {
		return 0, err
	}
	if m.info.ReadOnly {
		return 0, ErrReadOnly
	}
	if err := m.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	copy(m.data[off:], p)
	m.mark(off, int64(len(p)), true)
	return len(p), nil
}

func (m *memBackend) mark(off, length int64, alloc bool) {
	for b := off / memBlock; b*memBlock < off+length; b++ {
		whole := b*memBlock >= off && (b+1)*memBlock <= off+length
		if alloc || whole {
			m.alloc[b] = alloc
		}
	}
}

func (m *memBackend) Size() int64 { return int64(len(m.data)) }
func (m *memBackend) Info() Info  { return m.info }

func (m *memBackend) Flush() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.record("Flush()")
}

func (m *memBackend) Trim(off, length int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.record("Trim(%d, %d)", off, length); err != nil {
		return err
	}
	return m.check(off, length)
}

func (m *memBackend) Zero(off, length int64, flags ZeroFlags) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.record("Zero(%d, %d, %d)", off, length, flags); err != nil {
		return err
	}
	if err := m.check(off, length); err != nil {
		return err
	}
	clear(m.data[off : off+length])
	m.mark(off, length, flags&ZeroNoHole != 0)
	return nil
}

func (m *memBackend) Extents(dst []Extent, off, length int64) ([]Extent, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.record("Extents(%d, %d)", off, length); err != nil {
		return dst, err
	}
	if err := m.check(off, length); err != nil {
		return dst, err
	}
	first := len(dst)
	for pos, end := off, off+length; pos < end; {
		b := pos / memBlock
		next := min((b+1)*memBlock, end)
		var fl ExtentFlags
		if !m.alloc[b] {
			fl = ExtentHole | ExtentZero
		}
		dst = appendExtent(dst, first, Extent{Length: next - pos, Flags: fl})
		pos = next
	}
	return dst, nil
}

func (m *memBackend) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	err := m.record("Close()")
	m.closed = true
	return err
}
