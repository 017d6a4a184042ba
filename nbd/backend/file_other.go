//go:build !linux

package backend

import (
	"fmt"
	"io"
	"io/fs"
	"os"
)

// sysFile is empty: the portable File has no trim, fast zero or extents.
type sysFile struct{}

func (f *File) preadCached(p []byte, off int64) (int, error) { return f.f.ReadAt(p, off) }

func (f *File) open(path string, opts Options) error {
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
		f.desc.ReadOnly = true
		f.desc.ReadOnlyReason = "read-only was asked for"
	}
	fh, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return fmt.Errorf("backend: %w", err)
	}
	st, err := fh.Stat()
	if err != nil {
		fh.Close()
		return fmt.Errorf("backend: %w", err)
	}
	switch m := st.Mode(); {
	case m.IsRegular():
		f.desc.Kind = KindImage
		f.desc.StorageSize = st.Size()
	case m&fs.ModeDevice != 0:
		f.desc.Kind = KindBlockDevice
		size, err := fh.Seek(0, io.SeekEnd)
		if err != nil {
			fh.Close()
			return fmt.Errorf("backend: %s: size: %w", path, err)
		}
		f.desc.StorageSize = size
		f.desc.LogicalSector, f.desc.PhysicalSector = 512, 512
		f.info.MinBlock = 512
	default:
		fh.Close()
		return fmt.Errorf("backend: %s is neither a regular file nor a device (mode %v)", path, m.Type())
	}
	f.f = fh
	f.info.ReadOnly = f.desc.ReadOnly
	f.info.SharedCache = true
	f.info.PreferredBlock = 4096
	return nil
}

// WriteAtFUA writes p at off and makes it durable.
func (f *File) WriteAtFUA(p []byte, off int64) (int, error) {
	n, err := f.WriteAt(p, off)
	if err == nil {
		err = f.Flush()
	}
	return n, err
}

// Flush makes completed writes durable (fsync).
func (f *File) Flush() error {
	if f.info.ReadOnly {
		return nil
	}
	return f.f.Sync()
}

// Trim does nothing here: there is no portable way to release space.
func (f *File) Trim(off, length int64) error {
	return f.checkWrite(off, length)
}

// Zero writes zeroes; it is never fast here.
func (f *File) Zero(off, length int64, flags ZeroFlags) error {
	if err := f.checkWrite(off, length); err != nil {
		return err
	}
	if flags&ZeroFast != 0 {
		return ErrNotSupported
	}
	return writeZeroes(f.f, off, length)
}

// Extents reports the range as one data extent.
func (f *File) Extents(dst []Extent, off, length int64) ([]Extent, error) {
	if err := checkRange(f.desc.Path, off, length, f.size); err != nil {
		return dst, err
	}
	if length == 0 {
		return dst, nil
	}
	return append(dst, Extent{Length: length}), nil
}

func ioError(err error) error { return err }

// pwriteCached is os.File.WriteAt outside Linux.
func (f *File) pwriteCached(p []byte, off int64) (int, error) { return f.f.WriteAt(p, off) }
