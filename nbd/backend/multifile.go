package backend

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
)

// multi concatenates backends into one export.
type multi struct {
	parts  []Backend
	starts []int64 // starts[i] is where parts[i] begins; starts[len(parts)] is their total
	size   int64
	info   Info
}

// OpenMultifile opens path.0, path.1, ... (as many as exist, at least
// path.0) with Open and serves them concatenated as one export. Options
// apply to every part, except Size, which limits the whole, and Create,
// which is not supported. If any part is read-only the export is.
func OpenMultifile(path string, opts Options) (Backend, error) {
	if opts.Create != 0 {
		return nil, fmt.Errorf("backend: %s: multifile cannot create its parts", path)
	}
	var parts []Backend
	closeAll := func() {
		for _, p := range parts {
			p.Close()
		}
	}
	for i := 0; ; i++ {
		name := fmt.Sprintf("%s.%d", path, i)
		if _, err := os.Stat(name); errors.Is(err, fs.ErrNotExist) && i > 0 {
			break
		}
		f, err := Open(name, Options{ReadOnly: opts.ReadOnly, AllowInUse: opts.AllowInUse})
		if err != nil {
			closeAll()
			return nil, err
		}
		parts = append(parts, f)
	}
	m, err := newMulti(parts, opts.Size)
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("backend: multifile %s: %w", path, err)
	}
	return m, nil
}

// newMulti concatenates parts, limited to size bytes if size is positive.
func newMulti(parts []Backend, size int64) (*multi, error) {
	if len(parts) == 0 {
		return nil, errors.New("no parts")
	}
	m := &multi{parts: parts, starts: make([]int64, len(parts)+1)}
	m.info = Info{CanTrim: true, CanFastZero: true, SharedCache: true}
	for i, p := range parts {
		pi := p.Info()
		m.info.ReadOnly = m.info.ReadOnly || pi.ReadOnly
		m.info.CanTrim = m.info.CanTrim && pi.CanTrim
		m.info.CanFastZero = m.info.CanFastZero && pi.CanFastZero
		m.info.CanExtents = m.info.CanExtents || pi.CanExtents
		m.info.SharedCache = m.info.SharedCache && pi.SharedCache
		m.info.Rotational = m.info.Rotational || pi.Rotational
		m.info.MinBlock = max(m.info.MinBlock, pi.MinBlock)
		m.info.PreferredBlock = max(m.info.PreferredBlock, pi.PreferredBlock)
		if m.starts[i] > (1<<63-1)-p.Size() {
			return nil, fmt.Errorf("part %d makes the total size overflow", i)
		}
		m.starts[i+1] = m.starts[i] + p.Size()
	}
	if m.info.ReadOnly {
		m.info.CanTrim, m.info.CanFastZero = false, false
	}
	// A request aligned to the sectors must stay aligned in every part.
	if mb := int64(m.info.MinBlock); mb > 1 {
		for i := range parts[:len(parts)-1] {
			if parts[i].Size()%mb != 0 {
				return nil, fmt.Errorf("part %d is %d bytes, not a multiple of the %d-byte sectors", i, parts[i].Size(), mb)
			}
		}
	}
	m.size = m.starts[len(parts)]
	if size > 0 {
		if size > m.size {
			return nil, fmt.Errorf("size %d is larger than the parts together (%d bytes)", size, m.size)
		}
		if mb := int64(m.info.MinBlock); mb > 1 && size%mb != 0 {
			return nil, fmt.Errorf("size %d is not a multiple of the %d-byte sectors", size, mb)
		}
		m.size = size
	}
	return m, nil
}

// each calls fn for every part that [off, off+length) touches, with the
// range within the part and how many bytes came before it.
func (m *multi) each(off, length int64, fn func(p Backend, off, length, done int64) error) error {
	i := sort.Search(len(m.parts), func(i int) bool { return m.starts[i+1] > off })
	for done := int64(0); done < length && i < len(m.parts); i++ {
		pos := off + done
		n := min(length-done, m.starts[i+1]-pos)
		if n == 0 {
			continue // an empty part
		}
		if err := fn(m.parts[i], pos-m.starts[i], n, done); err != nil {
			return err
		}
		done += n
	}
	return nil
}

func (m *multi) Size() int64 { return m.size }
func (m *multi) Info() Info  { return m.info }

func (m *multi) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("backend: multifile: read at negative offset %d", off)
	}
	if off >= m.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	short := false
	if rem := m.size - off; int64(len(p)) > rem {
		p, short = p[:rem], true
	}
	total := 0
	err := m.each(off, int64(len(p)), func(b Backend, off, n, done int64) error {
		got, err := b.ReadAt(p[done:done+n], off)
		total += got
		if err == io.EOF && int64(got) == n {
			err = nil
		}
		return err
	})
	if err == nil && short {
		err = io.EOF
	}
	return total, err
}

func (m *multi) WriteAt(p []byte, off int64) (int, error) {
	if err := m.checkWrite(off, int64(len(p))); err != nil {
		return 0, err
	}
	total := 0
	err := m.each(off, int64(len(p)), func(b Backend, off, n, done int64) error {
		got, err := b.WriteAt(p[done:done+n], off)
		total += got
		return err
	})
	return total, err
}

func (m *multi) checkWrite(off, length int64) error {
	if m.info.ReadOnly {
		return ErrReadOnly
	}
	return checkRange("multifile", off, length, m.size)
}

func (m *multi) Trim(off, length int64) error {
	if err := m.checkWrite(off, length); err != nil {
		return err
	}
	return m.each(off, length, func(b Backend, off, n, _ int64) error { return b.Trim(off, n) })
}

func (m *multi) Zero(off, length int64, flags ZeroFlags) error {
	if err := m.checkWrite(off, length); err != nil {
		return err
	}
	if flags&ZeroFast != 0 && !m.info.CanFastZero {
		return ErrNotSupported // before any part has changed
	}
	return m.each(off, length, func(b Backend, off, n, _ int64) error { return b.Zero(off, n, flags) })
}

// Extents gathers the parts' extents, merging runs across part boundaries.
// It stops after the first part that answers for less than it was asked.
func (m *multi) Extents(dst []Extent, off, length int64) ([]Extent, error) {
	if err := checkRange("multifile", off, length, m.size); err != nil {
		return dst, err
	}
	first := len(dst)
	var scratch []Extent
	errShort := errors.New("short")
	err := m.each(off, length, func(b Backend, off, n, _ int64) error {
		var err error
		scratch, err = b.Extents(scratch[:0], off, n)
		if err != nil {
			return err
		}
		covered := int64(0)
		for _, e := range scratch {
			e.Length = min(e.Length, n-covered)
			dst = appendExtent(dst, first, e)
			if covered += e.Length; covered == n {
				break
			}
		}
		if covered < n {
			return errShort
		}
		return nil
	})
	if err != nil && err != errShort {
		return dst[:first], err
	}
	return dst, nil
}

func (m *multi) Flush() error {
	var errs []error
	for _, p := range m.parts {
		errs = append(errs, p.Flush())
	}
	return errors.Join(errs...)
}

func (m *multi) Close() error {
	var errs []error
	for _, p := range m.parts {
		errs = append(errs, p.Close())
	}
	return errors.Join(errs...)
}
