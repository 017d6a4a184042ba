package backend

import (
	"fmt"
	"io"
)

// slice is a window [off, off+size) of another Backend.
type slice struct {
	b         Backend
	off, size int64
	info      Info
}

// NewSlice returns the window [offset, offset+size) of b as a Backend, e.g.
// one partition of a whole-disk image. The window must lie within b and,
// if b has sectors, start and end on sector boundaries. Closing the slice
// closes b.
func NewSlice(b Backend, offset, size int64) (Backend, error) {
	bsize := b.Size()
	switch {
	case offset < 0:
		return nil, fmt.Errorf("backend: slice offset %d is negative", offset)
	case size <= 0:
		return nil, fmt.Errorf("backend: slice size %d is not positive", size)
	case offset > bsize || size > bsize-offset:
		return nil, fmt.Errorf("backend: slice [%d, +%d) ends at %d, past the end of the %d-byte storage",
			offset, size, offset+size, bsize)
	}
	info := b.Info()
	if mb := int64(info.MinBlock); mb > 1 && (offset%mb != 0 || size%mb != 0) {
		return nil, fmt.Errorf("backend: slice [%d, +%d) is not aligned to the storage's %d-byte sectors",
			offset, size, mb)
	}
	// A block preferred by the storage is preferred in the slice only if
	// the slice starts on such a block.
	if pb := int64(info.PreferredBlock); pb > 0 {
		for pb > max(int64(info.MinBlock), 512) && offset%pb != 0 {
			pb /= 2
		}
		info.PreferredBlock = uint32(pb)
	}
	return &slice{b: b, off: offset, size: size, info: info}, nil
}

func (s *slice) Size() int64  { return s.size }
func (s *slice) Info() Info   { return s.info }
func (s *slice) Flush() error { return s.b.Flush() }
func (s *slice) Close() error { return s.b.Close() }

func (s *slice) ReadAt(p []byte, off int64) (int, error) { return s.read(p, off, false) }

func (s *slice) read(p []byte, off int64, cached bool) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("backend: slice: read at negative offset %d", off)
	}
	if off >= s.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	short := false
	if rem := s.size - off; int64(len(p)) > rem {
		p, short = p[:rem], true
	}
	var n int
	var err error
	if cached {
		n, err = ReadAtCached(s.b, p, s.off+off)
	} else {
		n, err = s.b.ReadAt(p, s.off+off)
	}
	if err == io.EOF && n == len(p) {
		err = nil // the end of the inner storage may be the end of the slice
	}
	if err == nil && short {
		err = io.EOF
	}
	return n, err
}

// ReadAtCached keeps the inner storage's ReadAtCached visible.
func (s *slice) ReadAtCached(p []byte, off int64) (int, error) {
	return s.read(p, off, true)
}

// ReadToPipe keeps the inner storage's ReadToPipe visible.
func (s *slice) ReadToPipe(pipeFD int, off int64, length int, cached bool) (int, error) {
	if err := checkRange("slice", off, int64(length), s.size); err != nil {
		return 0, err
	}
	return ReadToPipe(s.b, pipeFD, s.off+off, length, cached)
}

func (s *slice) WriteAt(p []byte, off int64) (int, error) {
	if err := checkRange("slice", off, int64(len(p)), s.size); err != nil {
		return 0, err
	}
	return s.b.WriteAt(p, s.off+off)
}

// WriteAtCached keeps the inner storage's WriteAtCached visible.
func (s *slice) WriteAtCached(p []byte, off int64) (int, error) {
	if err := checkRange("slice", off, int64(len(p)), s.size); err != nil {
		return 0, err
	}
	return WriteAtCached(s.b, p, s.off+off)
}

// WriteAtFUA passes a forced-unit-access write through to the storage.
func (s *slice) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := checkRange("slice", off, int64(len(p)), s.size); err != nil {
		return 0, err
	}
	return WriteAtFUA(s.b, p, s.off+off)
}

func (s *slice) Trim(off, length int64) error {
	if err := checkRange("slice", off, length, s.size); err != nil {
		return err
	}
	return s.b.Trim(s.off+off, length)
}

func (s *slice) Zero(off, length int64, flags ZeroFlags) error {
	if err := checkRange("slice", off, length, s.size); err != nil {
		return err
	}
	return s.b.Zero(s.off+off, length, flags)
}

// Extents asks the inner backend and cuts what it says at the slice's end.
func (s *slice) Extents(dst []Extent, off, length int64) ([]Extent, error) {
	if err := checkRange("slice", off, length, s.size); err != nil {
		return dst, err
	}
	first := len(dst)
	dst, err := s.b.Extents(dst, s.off+off, length)
	if err != nil {
		return dst[:first], err
	}
	left := s.size - off
	for i := first; i < len(dst); i++ {
		if dst[i].Length >= left {
			dst[i].Length = left
			return dst[:i+1], nil
		}
		left -= dst[i].Length
	}
	return dst, nil
}
