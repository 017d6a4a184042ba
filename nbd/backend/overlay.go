package backend

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/bits"
	"os"
	"sync"
	"sync/atomic"
)

// overlay is a copy-on-write layer over a base Backend. Blocks written
// since the overlay was made live in a sparse overlay file at their own
// offset (plus dataOff); a bitmap says which blocks those are. Everything
// else reads from the base, which is never written.
//
// A persistent overlay file starts with a header and the bitmap:
//
//	[0, 4096)              header: overlayMagic, version, block size, base size
//	[4096, 4096+bitmap)    bitmap: bit b of word w (little-endian uint64) is
//	                       block 64w+b; a set bit means the overlay has it
//	[dataOff, dataOff+size) the blocks, at their offset in the export
//
// The bitmap on disk only ever covers blocks whose data was made durable
// before it (Flush writes data, then bitmap), so after a crash every block
// reads as either the base or a completed write.
type overlay struct {
	base       Backend
	ov         *File
	size       int64
	bs         int64 // block size, a power of two
	dataOff    int64
	persistent bool
	tmpPath    string // a temporary file still to remove at Close
	info       Info

	bits  []atomic.Uint64 // one bit per block
	dirty []atomic.Uint64 // persistent: one bit per bitmap page not yet on disk

	// locks serialise the writes that fill a block for the first time
	// (copying the rest of it up from the base); a block is guarded by
	// locks[block%len(locks)]. Once a block's bit is set it needs none.
	locks [256]sync.Mutex

	flushMu sync.Mutex
}

const (
	overlayMagic   = "BNBDCOW\x00"
	overlayVersion = 1
	overlayHeader  = 4096
	bitmapPage     = 4096 // bytes of bitmap written as one unit
	wordsPerPage   = bitmapPage / 8
)

// NewOverlay returns a copy-on-write view of base: writes go to the sparse
// overlay file at overlayPath, reads of unwritten blocks fall through to
// base, and base is never written. The overlay tracks 4 KiB blocks (or the
// base's sector, if larger).
//
// A persistent overlay keeps its file, and its allocation bitmap in it, so
// that it survives restarts: an existing file is opened and must have been
// made for a base of the same size; a missing one is created. A
// non-persistent overlay is a new temporary file at overlayPath (in the
// system's temporary directory if overlayPath is "") that is deleted on
// Close (on Linux at once, so a crash leaves nothing behind); a file already
// at overlayPath is an error, so a persistent overlay is never overwritten.
//
// Closing the overlay closes base.
func NewOverlay(base Backend, overlayPath string, persistent bool) (Backend, error) {
	bi := base.Info()
	o := &overlay{base: base, size: base.Size(), bs: max(4096, int64(bi.MinBlock)), persistent: persistent}
	if persistent && overlayPath == "" {
		return nil, errors.New("backend: a persistent overlay needs a path")
	}
	var err error
	if persistent {
		err = o.openPersistent(overlayPath)
	} else {
		err = o.openTemp(overlayPath)
	}
	if err != nil {
		return nil, err
	}
	o.info = Info{
		CanFastZero:    o.ov.Info().CanFastZero,
		CanExtents:     true,
		SharedCache:    true,
		Rotational:     bi.Rotational,
		MinBlock:       bi.MinBlock,
		PreferredBlock: uint32(max(int64(bi.PreferredBlock), o.bs)),
	}
	return o, nil
}

func (o *overlay) blocks() int64 { return (o.size + o.bs - 1) / o.bs }

// bitmapBytes is the size of the bitmap on disk: whole pages.
func (o *overlay) bitmapBytes() int64 {
	words := (o.blocks() + 63) / 64
	return (words*8 + bitmapPage - 1) / bitmapPage * bitmapPage
}

func (o *overlay) allocBits() {
	words := (o.blocks() + 63) / 64
	o.bits = make([]atomic.Uint64, words)
	if o.persistent {
		pages := (words + wordsPerPage - 1) / wordsPerPage
		o.dirty = make([]atomic.Uint64, (pages+63)/64)
	}
}

func (o *overlay) openTemp(path string) error {
	var fh *os.File
	var err error
	if path == "" {
		fh, err = os.CreateTemp("", "boardnbd-overlay-*")
	} else {
		fh, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("backend: overlay %s exists; a non-persistent overlay is made anew (remove it, or make the overlay persistent)", path)
		}
	}
	if err != nil {
		return fmt.Errorf("backend: overlay: %w", err)
	}
	name := fh.Name()
	err = fh.Truncate((o.size + o.bs - 1) / o.bs * o.bs)
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		o.ov, err = Open(name, Options{})
	}
	if err != nil {
		os.Remove(name)
		return fmt.Errorf("backend: overlay: %w", err)
	}
	if os.Remove(name) != nil {
		o.tmpPath = name // Windows: not while it is open
	}
	o.allocBits()
	return nil
}

func (o *overlay) openPersistent(path string) error {
	_, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return o.create(path)
	}
	ov, err := Open(path, Options{})
	if err != nil {
		return fmt.Errorf("backend: overlay: %w", err)
	}
	o.ov = ov
	if err := o.load(); err != nil {
		ov.Close()
		return fmt.Errorf("backend: overlay %s: %w", path, err)
	}
	return nil
}

func (o *overlay) create(path string) error {
	o.dataOff = (overlayHeader + o.bitmapBytes() + o.bs - 1) / o.bs * o.bs
	total := o.dataOff + (o.size+o.bs-1)/o.bs*o.bs
	ov, err := Open(path, Options{Create: total})
	if err != nil {
		return fmt.Errorf("backend: overlay: %w", err)
	}
	o.ov = ov
	hdr := make([]byte, overlayHeader)
	copy(hdr, overlayMagic)
	binary.LittleEndian.PutUint32(hdr[8:], overlayVersion)
	binary.LittleEndian.PutUint32(hdr[12:], uint32(o.bs))
	binary.LittleEndian.PutUint64(hdr[16:], uint64(o.size))
	if _, err := ov.WriteAt(hdr, 0); err == nil {
		err = ov.Flush()
	}
	if err != nil {
		ov.Close()
		os.Remove(path)
		return fmt.Errorf("backend: overlay %s: %w", path, err)
	}
	o.allocBits()
	return nil
}

// load reads and checks the header and the bitmap of an existing overlay.
func (o *overlay) load() error {
	hdr := make([]byte, overlayHeader)
	if _, err := o.ov.ReadAt(hdr, 0); err != nil {
		return fmt.Errorf("read header: %w", err)
	}
	if !bytes.Equal(hdr[:8], []byte(overlayMagic)) {
		return errors.New("not a boardnbd overlay file")
	}
	if v := binary.LittleEndian.Uint32(hdr[8:]); v != overlayVersion {
		return fmt.Errorf("overlay format version %d, want %d", v, overlayVersion)
	}
	bs := int64(binary.LittleEndian.Uint32(hdr[12:]))
	if !isPow2(bs) || bs < o.bs || bs > 1<<20 {
		return fmt.Errorf("block size %d does not suit a base with %d-byte blocks", bs, o.bs)
	}
	if size := binary.LittleEndian.Uint64(hdr[16:]); size != uint64(o.size) {
		return fmt.Errorf("made for a %d-byte base, but this base is %d bytes", size, o.size)
	}
	o.bs = bs
	o.dataOff = (overlayHeader + o.bitmapBytes() + o.bs - 1) / o.bs * o.bs
	if want := o.dataOff + (o.size+o.bs-1)/o.bs*o.bs; o.ov.Size() < want {
		return fmt.Errorf("file is %d bytes, want %d: truncated", o.ov.Size(), want)
	}
	o.allocBits()
	buf := make([]byte, 1<<20)
	for w := 0; w < len(o.bits); {
		n := min(len(buf)/8, len(o.bits)-w)
		if _, err := o.ov.ReadAt(buf[:n*8], overlayHeader+int64(w)*8); err != nil {
			return fmt.Errorf("read bitmap: %w", err)
		}
		for i := range n {
			o.bits[w+i].Store(binary.LittleEndian.Uint64(buf[i*8:]))
		}
		w += n
	}
	return nil
}

func (o *overlay) has(b int64) bool { return o.bits[b>>6].Load()&(1<<(b&63)) != 0 }

func (o *overlay) set(first, last int64) {
	for b := first; b <= last; b++ {
		o.bits[b>>6].Or(1 << (b & 63))
		if o.persistent {
			page := b >> 6 / wordsPerPage
			o.dirty[page>>6].Or(1 << (page & 63))
		}
	}
}

// run returns the end (exclusive) of the run of blocks from b that are all
// allocated or all not, no further than limit.
func (o *overlay) run(b, limit int64) int64 {
	alloc := o.has(b)
	for b++; b < limit; {
		if b&63 == 0 && limit-b >= 64 {
			w := o.bits[b>>6].Load()
			if (alloc && w == ^uint64(0)) || (!alloc && w == 0) {
				b += 64
				continue
			}
		}
		if o.has(b) != alloc {
			return b
		}
		b++
	}
	return limit
}

func (o *overlay) Size() int64 { return o.size }
func (o *overlay) Info() Info  { return o.info }

func (o *overlay) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("backend: overlay: read at negative offset %d", off)
	}
	if off >= o.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	short := false
	if rem := o.size - off; int64(len(p)) > rem {
		p, short = p[:rem], true
	}
	end := off + int64(len(p))
	for pos := off; pos < end; {
		b := pos / o.bs
		next := min(o.run(b, (end+o.bs-1)/o.bs)*o.bs, end)
		q := p[pos-off : next-off]
		var err error
		if o.has(b) {
			_, err = o.ov.ReadAt(q, o.dataOff+pos)
		} else {
			_, err = o.base.ReadAt(q, pos)
		}
		if err != nil && !(err == io.EOF && next == o.size) {
			return int(pos - off), err
		}
		pos = next
	}
	if short {
		return len(p), io.EOF
	}
	return len(p), nil
}

// ReadToPipe moves a range into a pipe from the overlay's file and the
// base, run by run, as ReadAt reads it (see PipeReader). Where the base
// cannot splice it stops, having moved the runs before, and the caller
// reads the rest.
func (o *overlay) ReadToPipe(pipeFD int, off int64, length int, cached bool) (int, error) {
	if err := checkRange("overlay", off, int64(length), o.size); err != nil {
		return 0, err
	}
	end := off + int64(length)
	for pos := off; pos < end; {
		b := pos / o.bs
		next := min(o.run(b, (end+o.bs-1)/o.bs)*o.bs, end)
		var k int
		var err error
		if o.has(b) {
			k, err = ReadToPipe(o.ov, pipeFD, o.dataOff+pos, int(next-pos), cached)
		} else {
			k, err = ReadToPipe(o.base, pipeFD, pos, int(next-pos), cached)
		}
		moved := int(pos-off) + k
		switch {
		case errors.Is(err, ErrNotSupported) && moved > 0:
			return moved, nil
		case err != nil:
			return moved, err
		case pos+int64(k) < next:
			return moved, nil // the pipe is full
		}
		pos = next
	}
	return length, nil
}

func (o *overlay) WriteAt(p []byte, off int64) (int, error) {
	if err := checkRange("overlay", off, int64(len(p)), o.size); err != nil {
		return 0, err
	}
	err := o.write(off, int64(len(p)), func(q []byte, at int64) error {
		copy(q, p[at-off:])
		return nil
	}, func(at, n int64) error {
		_, err := o.ov.WriteAt(p[at-off:at-off+n], o.dataOff+at)
		return err
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// write changes [off, off+length). Partial blocks go through a copy-up:
// the block is read (from the overlay, or the base if not there yet),
// patch fills in the new bytes, and it is written back whole. Runs of whole
// blocks go to whole, which writes [at, at+n) of the overlay's data area.
func (o *overlay) write(off, length int64, patch func(q []byte, at int64) error, whole func(at, n int64) error) error {
	end := off + length
	for pos := off; pos < end; {
		b := pos / o.bs
		start := b * o.bs
		blockEnd := min(start+o.bs, o.size)
		if pos != start || end < blockEnd {
			next := min(blockEnd, end)
			if err := o.partial(b, pos, next, patch); err != nil {
				return err
			}
			pos = next
			continue
		}
		// Whole blocks from b up to the last one end covers.
		last := (end - o.bs) / o.bs
		if end == o.size {
			last = o.blocks() - 1
		}
		runEnd := min((last+1)*o.bs, o.size)
		if err := o.wholeBlocks(b, last, func() error { return whole(pos, runEnd-pos) }); err != nil {
			return err
		}
		pos = runEnd
	}
	return nil
}

// partial changes [pos, next) within block b.
func (o *overlay) partial(b, pos, next int64, patch func(q []byte, at int64) error) error {
	start := b * o.bs
	blockEnd := min(start+o.bs, o.size)
	if o.has(b) {
		buf := make([]byte, next-pos)
		if err := patch(buf, pos); err != nil {
			return err
		}
		_, err := o.ov.WriteAt(buf, o.dataOff+pos)
		return err
	}
	mu := &o.locks[b%int64(len(o.locks))]
	mu.Lock()
	defer mu.Unlock()
	buf := make([]byte, blockEnd-start)
	var err error
	if o.has(b) { // filled while we waited
		buf = buf[:next-pos]
		if err := patch(buf, pos); err != nil {
			return err
		}
		_, err = o.ov.WriteAt(buf, o.dataOff+pos)
		return err
	}
	if _, err = o.base.ReadAt(buf, start); err != nil && err != io.EOF {
		return err
	}
	if err := patch(buf[pos-start:next-start], pos); err != nil {
		return err
	}
	if _, err = o.ov.WriteAt(buf, o.dataOff+start); err != nil {
		return err
	}
	o.set(b, b)
	return nil
}

// wholeBlocks runs fn, which overwrites blocks first..last entirely, and
// marks them allocated. Unless all are allocated already, it holds their
// locks meanwhile, so that no copy-up of one of them interleaves.
func (o *overlay) wholeBlocks(first, last int64, fn func() error) error {
	if o.run(first, last+1) == last+1 && o.has(first) {
		return fn()
	}
	n := int64(len(o.locks))
	var held []int
	if last-first+1 >= n {
		for i := range o.locks {
			held = append(held, i)
		}
	} else {
		// Ascending lock order, whatever the blocks' order.
		var mask [256 / 64]uint64
		for b := first; b <= last; b++ {
			i := b % n
			mask[i/64] |= 1 << (i % 64)
		}
		for i := range int(n) {
			if mask[i/64]&(1<<(i%64)) != 0 {
				held = append(held, i)
			}
		}
	}
	for _, i := range held {
		o.locks[i].Lock()
	}
	defer func() {
		for _, i := range held {
			o.locks[i].Unlock()
		}
	}()
	if err := fn(); err != nil {
		return err
	}
	o.set(first, last)
	return nil
}

// Trim does nothing: the base cannot release space, and releasing the
// overlay's copy would only bring back the base's bytes.
func (o *overlay) Trim(off, length int64) error {
	return checkRange("overlay", off, length, o.size)
}

// Zero zeroes the overlay's copy of whole blocks (a hole in the overlay
// file) and copies up partial ones.
func (o *overlay) Zero(off, length int64, flags ZeroFlags) error {
	if err := checkRange("overlay", off, length, o.size); err != nil {
		return err
	}
	if flags&ZeroFast != 0 && !o.info.CanFastZero {
		return ErrNotSupported
	}
	return o.write(off, length, func(q []byte, _ int64) error {
		clear(q)
		return nil
	}, func(at, n int64) error {
		return o.ov.Zero(o.dataOff+at, n, flags)
	})
}

// Extents reports the overlay file's extents for blocks it has and the
// base's for the others.
func (o *overlay) Extents(dst []Extent, off, length int64) ([]Extent, error) {
	if err := checkRange("overlay", off, length, o.size); err != nil {
		return dst, err
	}
	first, end := len(dst), off+length
	var scratch []Extent
	for pos, runs := off, 0; pos < end && runs < maxOverlayRuns; runs++ {
		b := pos / o.bs
		next := min(o.run(b, (end+o.bs-1)/o.bs)*o.bs, end)
		var err error
		if o.has(b) {
			scratch, err = o.ov.Extents(scratch[:0], o.dataOff+pos, next-pos)
		} else {
			scratch, err = o.base.Extents(scratch[:0], pos, next-pos)
		}
		if err != nil {
			return dst[:first], err
		}
		covered := int64(0)
		for _, e := range scratch {
			e.Length = min(e.Length, next-pos-covered)
			dst = appendExtent(dst, first, e)
			if covered += e.Length; covered == next-pos {
				break
			}
		}
		if covered < next-pos {
			break // the layer below stopped early; so do we
		}
		pos = next
	}
	return dst, nil
}

// maxOverlayRuns bounds the layer calls of one Extents call.
const maxOverlayRuns = 64

// Flush makes the writes durable, persistent overlays only: those of a
// non-persistent one die with it. The order keeps the file consistent: the
// dirty bitmap pages are copied first, then the data is synced, then the
// copies are written and synced. A block set after the copy waits for the
// next Flush.
func (o *overlay) Flush() error {
	if !o.persistent {
		return nil
	}
	o.flushMu.Lock()
	defer o.flushMu.Unlock()
	type page struct {
		index int64
		data  []byte
	}
	var pages []page
	for i := range o.dirty {
		w := o.dirty[i].Swap(0)
		for w != 0 {
			bit := int64(bits.TrailingZeros64(w))
			w &^= 1 << bit
			p := int64(i)*64 + bit
			data := make([]byte, bitmapPage)
			for j := range wordsPerPage {
				if k := p*wordsPerPage + int64(j); k < int64(len(o.bits)) {
					binary.LittleEndian.PutUint64(data[j*8:], o.bits[k].Load())
				}
			}
			pages = append(pages, page{p, data})
		}
	}
	redirty := func() {
		for _, p := range pages {
			o.dirty[p.index>>6].Or(1 << (p.index & 63))
		}
	}
	if err := o.ov.Flush(); err != nil {
		redirty()
		return err
	}
	if len(pages) == 0 {
		return nil
	}
	for _, p := range pages {
		if _, err := o.ov.WriteAt(p.data, overlayHeader+p.index*bitmapPage); err != nil {
			redirty()
			return err
		}
	}
	if err := o.ov.Flush(); err != nil {
		redirty()
		return err
	}
	return nil
}

// Close flushes a persistent overlay, deletes a temporary one, and closes
// the overlay file and the base.
func (o *overlay) Close() error {
	errs := []error{o.Flush(), o.ov.Close()}
	if o.tmpPath != "" {
		errs = append(errs, os.Remove(o.tmpPath))
	}
	errs = append(errs, o.base.Close())
	return errors.Join(errs...)
}
