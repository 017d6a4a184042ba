package backend

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Options say how Open opens an image file or a block device.
type Options struct {
	// ReadOnly opens the storage read-only; writes fail with ErrReadOnly.
	ReadOnly bool
	// AllowInUse opens a block device even when it is mounted or held by
	// another program. Without it such a device is refused, because writing
	// under a mounted file system corrupts it.
	AllowInUse bool
	// Size, if positive, makes the export the first Size bytes of the
	// storage. It is an error if the storage is smaller.
	Size int64
	// Create, if positive and the path does not exist, first creates a
	// sparse image file of Create bytes. An existing path is opened as it is.
	Create int64
}

// Kind says what Open found at a path.
type Kind uint8

const (
	KindImage       Kind = iota + 1 // a regular file
	KindBlockDevice                 // a block special file
)

func (k Kind) String() string {
	switch k {
	case KindImage:
		return "image file"
	case KindBlockDevice:
		return "block device"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Description is what Open learnt about the storage, for humans (boardnbd
// check) and logs.
type Description struct {
	Path         string // as given to Open
	ResolvedPath string // Path with symlinks resolved, e.g. /dev/disk/by-id/x → /dev/sda
	Kind         Kind
	Size         int64 // export size in bytes
	StorageSize  int64 // size of the whole file or device in bytes

	// Sector sizes as the device reports them (BLKSSZGET, BLKPBSZGET);
	// zero for image files, which have none.
	LogicalSector  uint32
	PhysicalSector uint32

	ReadOnly       bool
	ReadOnlyReason string // why ReadOnly, e.g. the device is write-protected
	Rotational     bool
	// InUse reports that the block device was mounted or held by another
	// program when it was opened (possible only with Options.AllowInUse).
	InUse bool

	Info Info // as returned by File.Info
}

// File is a Backend over an image file or a block device. Reads and writes
// go straight to the file with pread and pwrite; nothing is cached here.
type File struct {
	f    *os.File
	size int64
	info Info
	desc Description
	sys  sysFile // what the platform code knows about f
}

var _ Backend = (*File)(nil)

// Open opens the image file or block device at path as a Backend.
//
// On Linux a block device is opened exclusively (O_EXCL), so that one that
// is mounted or held by another program is refused with an error that
// wraps ErrInUse, unless opts.AllowInUse is set. A device that reports
// itself read-only (a write-protect switch, losetup -r) is opened read-only
// even when opts.ReadOnly is false; Describe says why.
func Open(path string, opts Options) (*File, error) {
	if opts.Size < 0 {
		return nil, fmt.Errorf("backend: %s: size %d is negative", path, opts.Size)
	}
	if opts.Create < 0 {
		return nil, fmt.Errorf("backend: %s: create size %d is negative", path, opts.Create)
	}
	if opts.Create > 0 {
		if err := createSparse(path, opts.Create); err != nil {
			return nil, err
		}
	}
	resolved, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, fmt.Errorf("backend: %w", err)
	}
	f := &File{desc: Description{Path: path, ResolvedPath: resolved}}
	if err := f.open(path, opts); err != nil {
		return nil, err
	}
	f.size = f.desc.StorageSize
	if opts.Size > 0 {
		if opts.Size > f.desc.StorageSize {
			f.f.Close()
			return nil, fmt.Errorf("backend: %s: size %d is larger than the %s (%d bytes)",
				path, opts.Size, f.desc.Kind, f.desc.StorageSize)
		}
		if mb := int64(f.info.MinBlock); mb > 1 && opts.Size%mb != 0 {
			f.f.Close()
			return nil, fmt.Errorf("backend: %s: size %d is not a multiple of the %d-byte logical sector",
				path, opts.Size, mb)
		}
		f.size = opts.Size
	}
	f.desc.Size = f.size
	f.desc.Info = f.info
	return f, nil
}

// createSparse creates path as a sparse file of size bytes, unless it exists.
func createSparse(path string, size int64) error {
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("backend: create: %w", err)
	}
	err = w.Truncate(size)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("backend: create: %w", err)
	}
	return nil
}

// Describe returns what Open learnt about the storage.
func (f *File) Describe() Description { return f.desc }

// Size returns the export size in bytes.
func (f *File) Size() int64 { return f.size }

// Info returns the capabilities found at Open.
func (f *File) Info() Info { return f.info }

// Close closes the file or device.
func (f *File) Close() error { return f.f.Close() }

// ReadAt reads len(p) bytes at off. Like io.ReaderAt it returns io.EOF when
// the read reaches the end of the export.
func (f *File) ReadAt(p []byte, off int64) (int, error) { return f.readAt(p, off, false) }

// ReadAtCached is ReadAt for bytes expected in the page cache (see
// CachedReader).
func (f *File) ReadAtCached(p []byte, off int64) (int, error) { return f.readAt(p, off, true) }

func (f *File) readAt(p []byte, off int64, cached bool) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("backend: %s: read at negative offset %d", f.desc.Path, off)
	}
	if off >= f.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	short := false
	if rem := f.size - off; int64(len(p)) > rem {
		p, short = p[:rem], true
	}
	var n int
	var err error
	if cached {
		n, err = f.preadCached(p, off)
	} else {
		n, err = f.f.ReadAt(p, off)
	}
	if err == io.EOF {
		return n, f.endsAt(off + int64(n))
	}
	if err != nil {
		return n, ioError(err)
	}
	if short {
		return n, io.EOF
	}
	return n, nil
}

// endsAt is the error of a read that found the file ending at pos, inside
// the export: someone truncated it.
func (f *File) endsAt(pos int64) error {
	return fmt.Errorf("backend: %s: file ends at %d, inside the %d-byte export: %w",
		f.desc.Path, pos, f.size, io.ErrUnexpectedEOF)
}

// WriteAt writes p at off. Writing past the end of the export is an error.
func (f *File) WriteAt(p []byte, off int64) (int, error) { return f.writeAt(p, off, false) }

// WriteAtCached is WriteAt for a write expected to be taken into the page
// cache at once (see CachedWriter).
func (f *File) WriteAtCached(p []byte, off int64) (int, error) { return f.writeAt(p, off, true) }

func (f *File) writeAt(p []byte, off int64, cached bool) (int, error) {
	if err := f.checkWrite(off, int64(len(p))); err != nil {
		return 0, err
	}
	var n int
	var err error
	if cached {
		n, err = f.pwriteCached(p, off)
	} else {
		n, err = f.f.WriteAt(p, off)
	}
	return n, ioError(err)
}

// checkWrite fails for a read-only File or a range outside the export.
func (f *File) checkWrite(off, length int64) error {
	if f.info.ReadOnly {
		return ErrReadOnly
	}
	return checkRange(f.desc.Path, off, length, f.size)
}

// checkRange fails unless [off, off+length) lies within [0, size).
func checkRange(name string, off, length, size int64) error {
	if off < 0 || length < 0 || off > size || length > size-off {
		return fmt.Errorf("backend: %s: range [%d, +%d) outside the %d-byte export", name, off, length, size)
	}
	return nil
}

// zeroChunk bounds the memory and the time of one write in writeZeroes.
const zeroChunk = 256 << 10

var zeroes [zeroChunk]byte

// writeZeroes writes length zero bytes at off, a chunk at a time. It is the
// slow path of Zero for storage that cannot zero faster.
func writeZeroes(w io.WriterAt, off, length int64) error {
	for length > 0 {
		n := min(length, zeroChunk)
		if _, err := w.WriteAt(zeroes[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

// appendExtent appends e to dst, merging it into the last extent if that
// has the same flags and lies at or after index first (the extents this
// call added, as opposed to the caller's).
func appendExtent(dst []Extent, first int, e Extent) []Extent {
	if e.Length <= 0 {
		return dst
	}
	if n := len(dst); n > first && dst[n-1].Flags == e.Flags {
		dst[n-1].Length += e.Length
		return dst
	}
	return append(dst, e)
}

// isPow2 reports whether v is a power of two.
func isPow2(v int64) bool { return v > 0 && v&(v-1) == 0 }
