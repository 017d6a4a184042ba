package backend

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sysFile is what the Linux code knows about an open File.
type sysFile struct {
	rc syscall.RawConn
	fd uintptr // for preadCached; valid until Close, after which no method runs

	// image files
	canPunch    bool        // fallocate(PUNCH_HOLE) works here
	noZeroRange atomic.Bool // fallocate(ZERO_RANGE) said EOPNOTSUPP

	// block devices
	sector      int64 // logical sector size
	writeZeroes bool  // the device zeroes without data transfer
}

// maxExtents bounds the extents, and so the lseek calls, of one Extents call
// on an image file.
const maxExtents = 512

func (f *File) open(path string, opts Options) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("backend: %w", err)
	}
	switch m := st.Mode(); {
	case m.IsRegular():
		err = f.openImage(path, opts)
	case m&fs.ModeDevice != 0 && m&fs.ModeCharDevice == 0:
		err = f.openBlock(path, opts)
	default:
		return fmt.Errorf("backend: %s is neither a regular file nor a block device (mode %v)", path, m.Type())
	}
	if err != nil {
		return err
	}
	f.sys.rc, err = f.f.SyscallConn()
	if err == nil {
		err = f.sys.rc.Control(func(fd uintptr) { f.sys.fd = fd })
	}
	if err != nil {
		f.f.Close()
		return fmt.Errorf("backend: %s: %w", path, err)
	}
	f.info.ReadOnly = f.desc.ReadOnly
	f.info.SharedCache = true // one page cache per inode or device
	f.info.Rotational = f.desc.Rotational
	return nil
}

func (f *File) openImage(path string, opts Options) error {
	f.desc.Kind = KindImage
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
		f.desc.ReadOnlyReason = "read-only was asked for"
	}
	fh, err := os.OpenFile(path, flag, 0)
	if !opts.ReadOnly && errors.Is(err, unix.EROFS) {
		fh, err = os.OpenFile(path, os.O_RDONLY, 0)
		f.desc.ReadOnlyReason = "the file system is mounted read-only"
	}
	if err != nil {
		return openError(err, opts)
	}
	f.f = fh
	f.desc.ReadOnly = f.desc.ReadOnlyReason != ""

	var st unix.Stat_t
	if err := unix.Fstat(int(fh.Fd()), &st); err != nil {
		fh.Close()
		return fmt.Errorf("backend: fstat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		fh.Close()
		return fmt.Errorf("backend: %s changed type while being opened", path)
	}
	f.desc.StorageSize = st.Size
	f.info.PreferredBlock = 4096
	if bs := int64(st.Blksize); isPow2(bs) && bs > 4096 {
		f.info.PreferredBlock = uint32(min(bs, 64<<10))
	}
	// The device under the file system, if it is one (tmpfs is not).
	dev := uint64(st.Dev)
	f.desc.Rotational = sysfsQueue(unix.Major(dev), unix.Minor(dev), "rotational") == 1

	if !f.desc.ReadOnly {
		// Punching a hole past the end changes nothing, and says whether
		// the file system can punch at all (tmpfs, ext4, xfs, btrfs can).
		err := unix.Fallocate(int(fh.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, st.Size, 1)
		f.sys.canPunch = err == nil
	}
	f.info.CanTrim = f.sys.canPunch
	f.info.CanFastZero = f.sys.canPunch
	f.info.CanExtents = true // SEEK_DATA/SEEK_HOLE; whole-data where unsupported
	return nil
}

func (f *File) openBlock(path string, opts Options) error {
	f.desc.Kind = KindBlockDevice
	excl := unix.O_EXCL
	if opts.AllowInUse {
		excl = 0
		// Only to tell the user: would an exclusive open have failed?
		if fd, err := unix.Open(path, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0); err == nil {
			unix.Close(fd)
		} else if err == unix.EBUSY {
			f.desc.InUse = true
		}
	}
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
	}
	fh, err := os.OpenFile(path, flag|excl, 0)
	if err != nil && flag == os.O_RDWR && (errors.Is(err, unix.EACCES) || errors.Is(err, unix.EROFS)) {
		// Some kernels refuse to open a write-protected device for
		// writing; that is no error if the device says it is read-only.
		if ro, rerr := os.OpenFile(path, os.O_RDONLY|excl, 0); rerr == nil {
			if v, _ := unix.IoctlGetUint32(int(ro.Fd()), unix.BLKROGET); v != 0 {
				fh, err, flag = ro, nil, os.O_RDONLY
			} else {
				ro.Close()
			}
		}
	}
	if errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("%w: %s is mounted or held by another program (%w); unmount it or set allow_in_use: true",
			ErrInUse, path, unix.EBUSY)
	}
	if err != nil {
		return openError(ioError(err), opts)
	}
	fail := func(format string, args ...any) error {
		fh.Close()
		return fmt.Errorf("backend: %s: "+format, append([]any{path}, args...)...)
	}
	fd := int(fh.Fd())

	// BLKROGET fills an int, which is 32 bits on every Linux.
	ro, err := unix.IoctlGetUint32(fd, unix.BLKROGET)
	if err != nil {
		return fail("BLKROGET: %w", err)
	}
	switch {
	case ro != 0:
		f.desc.ReadOnlyReason = "the device is write-protected (a lock switch, losetup -r or blockdev --setro)"
	case opts.ReadOnly:
		f.desc.ReadOnlyReason = "read-only was asked for"
	}
	f.desc.ReadOnly = f.desc.ReadOnlyReason != ""
	if ro != 0 && flag == os.O_RDWR {
		// Hold the device read-only, as it is. Close first: a second
		// exclusive open of our own would be refused.
		fh.Close()
		if fh, err = os.OpenFile(path, os.O_RDONLY|excl, 0); err != nil {
			return fmt.Errorf("backend: reopen read-only: %w", err)
		}
		fd = int(fh.Fd())
	}
	f.f = fh

	// BLKGETSIZE64 fills a u64 even on 32-bit systems, whose request
	// number claims a 4-byte argument: pass a *uint64, never an int.
	size, err := unix.IoctlGetUint64(fd, unix.BLKGETSIZE64)
	if err != nil {
		return fail("BLKGETSIZE64: %w", err)
	}
	if size > math.MaxInt64 {
		return fail("size %d is too large", size)
	}
	if size == 0 {
		return fail("device has size 0 (no medium, or an unbound loop device)")
	}
	f.desc.StorageSize = int64(size)

	logical, err := unix.IoctlGetUint32(fd, unix.BLKSSZGET)
	if err != nil {
		return fail("BLKSSZGET: %w", err)
	}
	if !isPow2(int64(logical)) || logical < 512 || logical > 64<<10 {
		return fail("logical sector size %d is not a power of two from 512 to 65536", logical)
	}
	physical, err := unix.IoctlGetUint32(fd, unix.BLKPBSZGET)
	if err != nil || !isPow2(int64(physical)) || physical < logical {
		physical = logical
	}
	f.desc.LogicalSector, f.desc.PhysicalSector = logical, physical
	f.sys.sector = int64(logical)
	// Writes go through the page cache, so a write smaller than a page is
	// read-modify-write whatever the sector size.
	f.info.MinBlock = logical
	f.info.PreferredBlock = max(physical, 4096)

	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fail("fstat: %w", err)
	}
	dev := uint64(st.Rdev)
	maj, mnr := unix.Major(dev), unix.Minor(dev)
	f.desc.Rotational = sysfsQueue(maj, mnr, "rotational") == 1
	if !f.desc.ReadOnly {
		f.info.CanTrim = sysfsQueue(maj, mnr, "discard_max_bytes") > 0
		f.sys.writeZeroes = sysfsQueue(maj, mnr, "write_zeroes_max_bytes") > 0
		f.info.CanFastZero = f.sys.writeZeroes
	}
	return nil
}

// openError explains a failed open, with a hint where the user can help.
func openError(err error, opts Options) error {
	if !opts.ReadOnly && (errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM)) {
		return fmt.Errorf("backend: %w (to export it read-only, set readonly: true on the export)", err)
	}
	return fmt.Errorf("backend: %w", err)
}

// sysfsQueue reads a number from the block device's queue directory in
// sysfs. A partition has none; its disk's, one level up, holds for it. It
// returns -1 if there is no such file (no sysfs, or not a block device).
func sysfsQueue(major, minor uint32, name string) int64 {
	dir := fmt.Sprintf("/sys/dev/block/%d:%d/", major, minor)
	b, err := os.ReadFile(dir + "queue/" + name)
	if err != nil {
		b, err = os.ReadFile(dir + "../queue/" + name)
	}
	if err != nil {
		return -1
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return -1
	}
	return v
}

// preadCached reads like os.File.ReadAt, with pread(2) made as a raw
// system call: the runtime does not see it, so it does not hand the
// thread's processor to another thread while it copies (see CachedReader).
func (f *File) preadCached(p []byte, off int64) (int, error) {
	return f.rawAt(syscall.SYS_PREAD64, "read", p, off, io.EOF)
}

// pwriteCached writes like os.File.WriteAt, with pwrite(2) made as a raw
// system call (see preadCached and CachedWriter).
func (f *File) pwriteCached(p []byte, off int64) (int, error) {
	return f.rawAt(syscall.SYS_PWRITE64, "write", p, off,
		&fs.PathError{Op: "write", Path: f.desc.Path, Err: io.ErrShortWrite})
}

// rawAt makes the raw system call trap, pread(2) or pwrite(2), until all
// of p is done, and returns atZero if a call does nothing.
func (f *File) rawAt(trap uintptr, op string, p []byte, off int64, atZero error) (int, error) {
	n := 0
	for n < len(p) {
		k, _, e := syscall.RawSyscall6(trap, f.sys.fd,
			uintptr(unsafe.Pointer(&p[n])), uintptr(len(p)-n), uintptr(off+int64(n)), 0, 0)
		switch {
		case e == syscall.EINTR:
			continue
		case e != 0:
			return n, &fs.PathError{Op: op, Path: f.desc.Path, Err: e}
		case k == 0:
			return n, atZero
		}
		n += int(k)
	}
	return n, nil
}

// ReadToPipe moves up to length bytes at off into a pipe with splice(2)
// (see PipeReader), made as a raw system call if cached (see preadCached).
func (f *File) ReadToPipe(pipeFD int, off int64, length int, cached bool) (int, error) {
	if err := checkRange(f.desc.Path, off, int64(length), f.size); err != nil {
		return 0, err
	}
	moved := 0
	for moved < length {
		pos := off + int64(moved)
		k, err := f.splice(pipeFD, &pos, length-moved, cached)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return moved, nil // the pipe is full
		case moved == 0 && (err == unix.EINVAL || err == unix.ENOSYS || err == unix.EOPNOTSUPP):
			return 0, fmt.Errorf("backend: %s: splice: %w: %w", f.desc.Path, ErrNotSupported, err)
		case err != nil:
			return moved, ioError(&fs.PathError{Op: "splice", Path: f.desc.Path, Err: err})
		case k == 0:
			return moved, f.endsAt(pos)
		}
		moved += int(k)
	}
	return moved, nil
}

func (f *File) splice(pipeFD int, pos *int64, n int, raw bool) (int, error) {
	const flags = unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK
	if !raw {
		k, err := unix.Splice(int(f.sys.fd), pos, pipeFD, nil, n, flags)
		return int(k), err
	}
	k, _, e := syscall.RawSyscall6(unix.SYS_SPLICE, f.sys.fd, uintptr(unsafe.Pointer(pos)),
		uintptr(pipeFD), 0, uintptr(n), flags)
	if e != 0 {
		return 0, e
	}
	return int(k), nil
}

// control runs fn on the file descriptor, which stays open meanwhile even
// if Close is called by mistake.
func (f *File) control(fn func(fd int) error) error {
	var err error
	if cerr := f.sys.rc.Control(func(fd uintptr) { err = fn(int(fd)) }); cerr != nil {
		return cerr
	}
	return err
}

// Flush makes completed writes durable: fdatasync, which on a block device
// also flushes the device's write cache.
func (f *File) Flush() error {
	if f.info.ReadOnly {
		return nil
	}
	err := f.control(unix.Fdatasync)
	if err != nil {
		return ioError(fmt.Errorf("backend: fdatasync %s: %w", f.desc.Path, err))
	}
	return nil
}

// WriteAtFUA writes p at off with RWF_DSYNC: durable when it returns,
// without flushing the rest of the file or device as Flush would. Where
// the kernel lacks pwritev2 it falls back to WriteAt and Flush.
func (f *File) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := f.checkWrite(off, int64(len(p))); err != nil {
		return 0, err
	}
	done := 0
	err := f.control(func(fd int) error {
		for done < len(p) {
			n, err := unix.Pwritev2(fd, [][]byte{p[done:]}, off+int64(done), unix.RWF_DSYNC)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			done += n
		}
		return nil
	})
	if err == unix.ENOSYS || err == unix.EOPNOTSUPP {
		n, werr := f.WriteAt(p[done:], off+int64(done))
		if werr == nil {
			werr = f.Flush()
		}
		return done + n, werr
	}
	if err != nil {
		return done, ioError(fmt.Errorf("backend: pwritev2 %s: %w", f.desc.Path, err))
	}
	return done, nil
}

// Trim releases [off, off+length): a hole punched in an image file, a
// discard on a block device (only the whole sectors within the range). It
// does nothing where neither is supported.
func (f *File) Trim(off, length int64) error {
	if err := f.checkWrite(off, length); err != nil {
		return err
	}
	if !f.info.CanTrim || length == 0 {
		return nil
	}
	var err error
	if f.desc.Kind == KindImage {
		err = f.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	} else {
		start, end := roundUp(off, f.sys.sector), roundDown(off+length, f.sys.sector)
		if start >= end {
			return nil
		}
		err = f.blkRange(unix.BLKDISCARD, start, end-start)
	}
	if errors.Is(err, unix.EOPNOTSUPP) {
		return nil
	}
	return err
}

// Zero makes [off, off+length) read as zeroes; see Backend.Zero.
//
// Image files: a punched hole (ZeroNoHole: fallocate ZERO_RANGE, or a hole
// punched and allocated again), else zeroes written. Block devices:
// fallocate(PUNCH_HOLE) (the kernel's write-zeroes that may unmap), else
// BLKZEROOUT; unaligned heads and tails are written. A zero is fast on a
// block device only if it advertises write-zeroes in sysfs.
func (f *File) Zero(off, length int64, flags ZeroFlags) error {
	if err := f.checkWrite(off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	if f.desc.Kind == KindImage {
		return f.zeroImage(off, length, flags)
	}
	return f.zeroBlock(off, length, flags)
}

func (f *File) zeroImage(off, length int64, flags ZeroFlags) error {
	const keep = unix.FALLOC_FL_KEEP_SIZE
	noHole := flags&ZeroNoHole != 0
	if !noHole && f.sys.canPunch {
		if err := f.fallocate(unix.FALLOC_FL_PUNCH_HOLE|keep, off, length); !errors.Is(err, unix.EOPNOTSUPP) {
			return err
		}
	}
	if !f.sys.noZeroRange.Load() {
		err := f.fallocate(unix.FALLOC_FL_ZERO_RANGE|keep, off, length)
		if !errors.Is(err, unix.EOPNOTSUPP) {
			return err
		}
		f.sys.noZeroRange.Store(true) // tmpfs, for one
	}
	if noHole && f.sys.canPunch {
		err := f.fallocate(unix.FALLOC_FL_PUNCH_HOLE|keep, off, length)
		if err == nil {
			return f.fallocate(keep, off, length)
		}
		if !errors.Is(err, unix.EOPNOTSUPP) {
			return err
		}
	}
	if flags&ZeroFast != 0 {
		return ErrNotSupported
	}
	return f.writeZeroes(off, length)
}

func (f *File) zeroBlock(off, length int64, flags ZeroFlags) error {
	end := off + length
	start, stop := roundUp(off, f.sys.sector), roundDown(end, f.sys.sector)
	if start >= stop {
		// Less than a sector: writing it is as fast as anything.
		return f.writeZeroes(off, length)
	}
	if flags&ZeroFast != 0 && !f.sys.writeZeroes {
		return ErrNotSupported
	}
	var err error = unix.EOPNOTSUPP
	if flags&ZeroNoHole == 0 {
		err = f.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, start, stop-start)
	}
	if errors.Is(err, unix.EOPNOTSUPP) {
		err = f.blkRange(unix.BLKZEROOUT, start, stop-start)
	}
	if err != nil {
		return err
	}
	if err := f.writeZeroes(off, start-off); err != nil {
		return err
	}
	return f.writeZeroes(stop, end-stop)
}

func (f *File) writeZeroes(off, length int64) error {
	return ioError(writeZeroes(f.f, off, length))
}

func (f *File) fallocate(mode uint32, off, length int64) error {
	err := f.control(func(fd int) error { return unix.Fallocate(fd, mode, off, length) })
	if err != nil {
		return ioError(fmt.Errorf("backend: fallocate %s (mode %#x, [%d, +%d)): %w", f.desc.Path, mode, off, length, err))
	}
	return nil
}

// blkRange issues an ioctl that takes a {start, length uint64} pair:
// BLKDISCARD, BLKZEROOUT.
func (f *File) blkRange(req uint, off, length int64) error {
	r := [2]uint64{uint64(off), uint64(length)}
	err := f.control(func(fd int) error {
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(&r))); e != 0 {
			return e
		}
		return nil
	})
	if err != nil {
		name := "BLKDISCARD"
		if req == unix.BLKZEROOUT {
			name = "BLKZEROOUT"
		}
		return ioError(fmt.Errorf("backend: %s %s [%d, +%d): %w", name, f.desc.Path, off, length, err))
	}
	return nil
}

// Extents reports holes and data of an image file by SEEK_DATA and
// SEEK_HOLE, at most maxExtents per call. A block device is one data extent.
func (f *File) Extents(dst []Extent, off, length int64) ([]Extent, error) {
	if err := checkRange(f.desc.Path, off, length, f.size); err != nil {
		return dst, err
	}
	if length == 0 {
		return dst, nil
	}
	if f.desc.Kind != KindImage {
		return append(dst, Extent{Length: length}), nil
	}
	first, end := len(dst), off+length
	err := f.control(func(fd int) error {
		// A file with every block allocated has no holes to find, and
		// on tmpfs SEEK_HOLE walks the page cache to the next hole (the
		// end of a full file: milliseconds per call on a large image),
		// so one fstat answers for it.
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err == nil && st.Blocks*512 >= st.Size {
			dst = append(dst, Extent{Length: length})
			return nil
		}
		pos := off
		for n := 0; pos < end && n < maxExtents; n++ {
			data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
			switch {
			case err == unix.ENXIO: // no data from pos to the end of the file
				data = end
			case err == unix.EINVAL || err == unix.EOPNOTSUPP: // no hole support
				dst = appendExtent(dst, first, Extent{Length: end - pos})
				return nil
			case err != nil:
				return err
			}
			if data > pos {
				next := min(data, end)
				dst = appendExtent(dst, first, Extent{Length: next - pos, Flags: ExtentHole | ExtentZero})
				pos = next
				continue
			}
			hole, err := unix.Seek(fd, pos, unix.SEEK_HOLE)
			if err == unix.ENXIO { // the file shrank under us
				hole = end
			} else if err != nil {
				return err
			}
			next := min(max(hole, pos+1), end)
			dst = appendExtent(dst, first, Extent{Length: next - pos})
			pos = next
		}
		return nil
	})
	if err != nil {
		return dst[:first], ioError(fmt.Errorf("backend: lseek %s: %w", f.desc.Path, err))
	}
	return dst, nil
}

// ioError marks errors of storage that has gone away (a device unplugged,
// a medium removed) as ErrUnavailable. Others it returns as they are.
func ioError(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOMEDIUM) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

func roundUp(v, to int64) int64   { return (v + to - 1) / to * to }
func roundDown(v, to int64) int64 { return v / to * to }
