// Package backend holds the storage behind NBD exports: image files, block
// devices, and wrappers (slices, copy-on-write overlays, multifile sets) that
// compose over any other Backend.
//
// It owns bytes at offsets and nothing else: it knows nothing of the NBD wire
// format, of sockets or of configuration files. The protocol package (nbd)
// calls a Backend; the appliance (cmd/boardnbd) opens one per export.
package backend

import (
	"errors"
)

// Backend is the storage of one export, as seen by one or more connections.
//
// Every method may be called from several goroutines at once. Offsets and
// lengths passed in are already checked against Size by the caller.
type Backend interface {
	// ReadAt and WriteAt follow io.ReaderAt and io.WriterAt. Errors of
	// storage that has gone away wrap ErrUnavailable; other I/O errors
	// (EIO) are returned as the system gave them.
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)

	// Size is the export size in bytes. It does not change while the
	// backend is open.
	Size() int64

	// Flush makes every completed write durable.
	Flush() error

	// Trim hints that [off, off+length) is no longer needed. The contents
	// of the range are undefined afterwards. A backend that cannot release
	// space (Info.CanTrim false) does nothing and returns nil.
	Trim(off, length int64) error

	// Zero makes [off, off+length) read as zeroes. With ZeroNoHole the
	// range stays allocated; with ZeroFast Zero returns ErrNotSupported at
	// once, without changing anything, unless it can zero faster than a
	// write of zeroes would.
	Zero(off, length int64, flags ZeroFlags) error

	// Extents appends to dst the allocation status of [off, off+length),
	// in order and without gaps, and returns the extended slice. It may
	// stop early (but returns at least one extent covering off) and may
	// extend the last extent past off+length.
	Extents(dst []Extent, off, length int64) ([]Extent, error)

	// Info describes what the backend can do and how it likes to be used.
	Info() Info

	// Close releases the backend. No other method is called after it.
	Close() error
}

// FUAWriter is implemented by backends that can make one write durable on
// its own, more cheaply than a Flush of everything written before it (a
// write with forced unit access, which the kernel's file systems use for
// their journals). WriteAtFUA returns only once p is on stable storage.
type FUAWriter interface {
	WriteAtFUA(p []byte, off int64) (int, error)
}

// WriteAtFUA writes p at off and makes it durable: with b's own WriteAtFUA
// if it has one, else with WriteAt and Flush.
func WriteAtFUA(b Backend, p []byte, off int64) (int, error) {
	if fw, ok := b.(FUAWriter); ok {
		return fw.WriteAtFUA(p, off)
	}
	n, err := b.WriteAt(p, off)
	if err == nil {
		err = b.Flush()
	}
	return n, err
}

// CachedReader is implemented by storage that can read more cheaply when
// the caller expects the bytes to be in memory (the page cache), as when
// the same storage has answered from memory many times in a row.
//
// ReadAtCached reads like ReadAt. It may keep the calling thread's Go
// processor while it reads, where ReadAt lets the runtime hand it to
// another thread if the read lasts more than a few tens of microseconds.
// The hand-off is what makes a large read from memory costly on a one-core
// board; but if the bytes are not in memory after all, no other goroutine
// runs on that processor until the read returns.
type CachedReader interface {
	ReadAtCached(p []byte, off int64) (int, error)
}

// ReadAtCached reads with b's ReadAtCached if it has one, else ReadAt.
func ReadAtCached(b Backend, p []byte, off int64) (int, error) {
	if cr, ok := b.(CachedReader); ok {
		return cr.ReadAtCached(p, off)
	}
	return b.ReadAt(p, off)
}

// CachedWriter is implemented by storage that can write more cheaply when
// the caller expects the write to be taken into memory (the page cache)
// without waiting, as when the same storage has answered from memory many
// times in a row.
//
// WriteAtCached writes like WriteAt. It may keep the calling thread's Go
// processor while it writes, as ReadAtCached does while it reads; if the
// write waits after all (on writeback, say), no other goroutine runs on
// that processor until it returns.
type CachedWriter interface {
	WriteAtCached(p []byte, off int64) (int, error)
}

// WriteAtCached writes with b's WriteAtCached if it has one, else WriteAt.
func WriteAtCached(b Backend, p []byte, off int64) (int, error) {
	if cw, ok := b.(CachedWriter); ok {
		return cw.WriteAtCached(p, off)
	}
	return b.WriteAt(p, off)
}

// PipeReader is implemented by storage that can move bytes into a pipe
// without copying them through the caller's memory: on Linux, splice(2)
// from the page cache hands the pipe references to the cached pages. A
// server can then send them on with a second splice, so that a large read
// reply is never copied by the server at all.
//
// ReadToPipe moves up to length bytes at off into the pipe whose write end
// is pipeFD, which must be non-blocking, and returns how many it moved:
// fewer than length when the pipe is full or the rest cannot be spliced
// (the caller then reads the rest with ReadAt), or with an error. After an
// error the pipe may hold some of the bytes (the caller then discards it),
// except that an error wrapping ErrNotSupported, where this storage cannot
// splice, comes before any are moved; the caller then reads with ReadAt.
//
// cached says the caller expects the bytes in memory, as with
// CachedReader: the call may then keep the thread's Go processor.
type PipeReader interface {
	ReadToPipe(pipeFD int, off int64, length int, cached bool) (int, error)
}

// ReadToPipe moves bytes into a pipe with b's ReadToPipe if it has one;
// otherwise it returns ErrNotSupported.
func ReadToPipe(b Backend, pipeFD int, off int64, length int, cached bool) (int, error) {
	if pr, ok := b.(PipeReader); ok {
		return pr.ReadToPipe(pipeFD, off, length, cached)
	}
	return 0, ErrNotSupported
}

// ZeroFlags modify Backend.Zero.
type ZeroFlags uint8

const (
	// ZeroNoHole asks that the zeroed range stay allocated.
	ZeroNoHole ZeroFlags = 1 << iota
	// ZeroFast asks Zero to fail with ErrNotSupported unless it is fast.
	ZeroFast
)

// Extent is one run of bytes with the same allocation status.
type Extent struct {
	Length int64
	Flags  ExtentFlags
}

// ExtentFlags describe an Extent.
type ExtentFlags uint32

const (
	// ExtentHole marks a run that is not allocated in the storage.
	ExtentHole ExtentFlags = 1 << iota
	// ExtentZero marks a run known to read as zeroes.
	ExtentZero
)

// Info describes a Backend's capabilities. The zero value describes a
// writable backend with no trim, no fast zero, no extents, 1-byte alignment.
type Info struct {
	ReadOnly    bool // every write fails; the export must be read-only
	CanTrim     bool // Trim releases space
	CanFastZero bool // Zero without ZeroNoHole is faster than writing zeroes
	CanExtents  bool // Extents reports real holes, not one data extent
	// SharedCache reports that a Flush through any handle of this storage
	// makes the writes of every other handle durable too, so that several
	// connections may share it (NBD_FLAG_CAN_MULTI_CONN).
	SharedCache bool
	Rotational  bool

	// Block size constraints. MinBlock is the smallest unit that can be
	// addressed without read-modify-write (a device's logical sector);
	// PreferredBlock the unit that is efficient (the physical sector or the
	// page size). Zero means 1 and 4096 respectively.
	MinBlock       uint32
	PreferredBlock uint32
}

// Sentinel errors a Backend may return; the server maps them to NBD errors.
var (
	// ErrNotSupported: the operation is not supported by this backend
	// (NBD_ENOTSUP), e.g. a fast zero that would not be fast.
	ErrNotSupported = errors.New("backend: operation not supported")
	// ErrReadOnly: a write to read-only storage (NBD_EPERM).
	ErrReadOnly = errors.New("backend: read-only")
	// ErrUnavailable: the storage has gone away (a device unplugged).
	ErrUnavailable = errors.New("backend: storage unavailable")
	// ErrInUse: Open refused a block device that is mounted or held by
	// another program (see Options.AllowInUse).
	ErrInUse = errors.New("backend: storage in use")
)
