package backend

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// These tests run against real loop devices and so need root. CI runs as
// root with CI=true, where skipping them would hide a broken backend.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("loop device tests need root, and CI must not skip them")
	}
	t.Skip("loop device tests need root")
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// loopDevice attaches a loop device over a new sparse file of size bytes in
// dir (a temporary directory if dir is empty) with the extra losetup args,
// and detaches it when the test ends.
func loopDevice(t *testing.T, dir string, size int64, args ...string) string {
	t.Helper()
	needRoot(t)
	if dir == "" {
		dir = t.TempDir()
	}
	img := newImage(t, dir, size)
	dev := run(t, "losetup", append(append([]string{"--find", "--show"}, args...), img)...)
	t.Cleanup(func() { exec.Command("losetup", "--detach", dev).Run() })
	return dev
}

// mountExt4 makes an ext4 file system on dev, mounts it in a temporary
// directory and unmounts it when the test ends.
func mountExt4(t *testing.T, dev string) string {
	t.Helper()
	run(t, "mkfs.ext4", "-q", "-F", dev)
	dir := t.TempDir()
	run(t, "mount", "-t", "ext4", dev, dir)
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	return dir
}

func TestLoopGeometry(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		size       int64
		wantSector uint32
	}{
		{"512-byte sectors", nil, 24 << 20, 512},
		{"4096-byte sectors", []string{"--sector-size", "4096"}, 8<<20 + 4096, 4096},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := loopDevice(t, "", tt.size, tt.args...)
			link := filepath.Join(t.TempDir(), "by-id")
			if err := os.Symlink(dev, link); err != nil {
				t.Fatal(err)
			}
			f := openT(t, link, Options{})
			d := f.Describe()
			if f.Size() != tt.size || d.StorageSize != tt.size {
				t.Errorf("Size() = %d, StorageSize %d, want %d", f.Size(), d.StorageSize, tt.size)
			}
			if d.Kind != KindBlockDevice || d.Path != link || d.ResolvedPath != dev {
				t.Errorf("Describe() = %v at %q → %q, want block device at %q → %q", d.Kind, d.Path, d.ResolvedPath, link, dev)
			}
			info := f.Info()
			if info.MinBlock != tt.wantSector || d.LogicalSector != tt.wantSector || d.PhysicalSector < tt.wantSector {
				t.Errorf("MinBlock = %d, sectors %d/%d, want %d", info.MinBlock, d.LogicalSector, d.PhysicalSector, tt.wantSector)
			}
			if info.PreferredBlock != max(tt.wantSector, 4096) {
				t.Errorf("PreferredBlock = %d, want %d", info.PreferredBlock, max(tt.wantSector, 4096))
			}
			if info.ReadOnly || info.CanExtents || !info.SharedCache || !info.CanTrim || !info.CanFastZero {
				t.Errorf("Info() = %+v, want writable, no extents, shared cache, trim, fast zero", info)
			}
			want := pattern(64<<10, 5)
			for _, off := range []int64{0, tt.size - 64<<10, 4096 * 3} {
				if _, err := f.WriteAt(want, off); err != nil {
					t.Fatalf("WriteAt(off=%d) = %v", off, err)
				}
				if got := readBack(t, f, off, len(want)); !bytes.Equal(got, want) {
					t.Errorf("ReadAt(off=%d) after WriteAt returned other bytes", off)
				}
				// A block device splices from its page cache too.
				r, w := pipeT(t, len(want))
				if n, err := f.ReadToPipe(w, off, len(want), false); err != nil || n != len(want) {
					t.Errorf("ReadToPipe(off=%d) = %d, %v", off, n, err)
				} else if got := drain(t, r, n); !bytes.Equal(got, want) {
					t.Errorf("ReadToPipe(off=%d) after WriteAt moved other bytes", off)
				}
			}
			if err := f.Flush(); err != nil {
				t.Errorf("Flush() = %v", err)
			}
			got, err := f.Extents(nil, 4096, 8192)
			if err != nil || len(got) != 1 || got[0] != (Extent{8192, 0}) {
				t.Errorf("Extents(off=4096, len=8192) = %v, %v, want one data extent", got, err)
			}
			// Size must be whole sectors, and no more than the device. (f
			// holds the device exclusively, hence AllowInUse.)
			if _, err := Open(dev, Options{AllowInUse: true, Size: tt.size + int64(tt.wantSector)}); err == nil || !strings.Contains(err.Error(), "larger") {
				t.Errorf("Open(Size: device+1 sector) = %v, want too large", err)
			}
			if tt.wantSector > 512 {
				if _, err := Open(dev, Options{AllowInUse: true, Size: 512}); err == nil || !strings.Contains(err.Error(), "multiple") {
					t.Errorf("Open(Size: 512) on 4096-byte sectors = %v, want not a multiple", err)
				}
			}
		})
	}
}

func TestLoopReadOnly(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		opts       Options
		wantReason string
	}{
		{"losetup -r", []string{"-r"}, Options{}, "write-protected"},
		{"losetup -r, asked read-only", []string{"-r"}, Options{ReadOnly: true}, "write-protected"},
		{"asked read-only", nil, Options{ReadOnly: true}, "asked"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := loopDevice(t, "", 1<<20, tt.args...)
			f := openT(t, dev, tt.opts)
			d := f.Describe()
			if !f.Info().ReadOnly || !d.ReadOnly || !strings.Contains(d.ReadOnlyReason, tt.wantReason) {
				t.Errorf("Info().ReadOnly = %v, reason %q, want true and %q", f.Info().ReadOnly, d.ReadOnlyReason, tt.wantReason)
			}
			if f.Info().CanTrim || f.Info().CanFastZero {
				t.Errorf("Info() = %+v, want no trim or zero on a read-only device", f.Info())
			}
			if _, err := f.WriteAt(make([]byte, 512), 0); !errors.Is(err, ErrReadOnly) {
				t.Errorf("WriteAt = %v, want ErrReadOnly", err)
			}
			// The device is held read-only, not just refused by us.
			flags, err := unix.FcntlInt(f.f.Fd(), unix.F_GETFL, 0)
			if err != nil || flags&unix.O_ACCMODE != unix.O_RDONLY {
				t.Errorf("open flags = %#x, %v, want O_RDONLY", flags, err)
			}
			if _, err := f.ReadAt(make([]byte, 4096), 0); err != nil {
				t.Errorf("ReadAt(off=0) = %v", err)
			}
		})
	}
}

func TestLoopTrimZero(t *testing.T) {
	for _, sector := range []string{"512", "4096"} {
		t.Run(sector, func(t *testing.T) {
			const size = 4 << 20
			// A backing file on tmpfs makes the loop device non-rotational.
			dir := fsDirs(t)["tmpfs"]
			dev := loopDevice(t, dir, size, "--sector-size", sector)
			f := openT(t, dev, Options{})
			if f.Describe().Rotational && dir != "" {
				t.Errorf("Describe().Rotational = true for a loop device over tmpfs")
			}
			all := pattern(size, 7)
			if _, err := f.WriteAt(all, 0); err != nil {
				t.Fatal(err)
			}
			ops := []struct {
				name   string
				off, n int64
				do     func(off, n int64) error
			}{
				{"Trim", 64 << 10, 64 << 10, f.Trim},
				{"Zero", 256 << 10, 128 << 10, func(off, n int64) error { return f.Zero(off, n, 0) }},
				{"Zero NoHole", 512 << 10, 64 << 10, func(off, n int64) error { return f.Zero(off, n, ZeroNoHole) }},
				{"Zero Fast", 1 << 20, 64 << 10, func(off, n int64) error { return f.Zero(off, n, ZeroFast) }},
				{"Zero unaligned", 2<<20 - 100, 10000, func(off, n int64) error { return f.Zero(off, n, 0) }},
				{"Zero tiny", 3<<20 + 5, 7, func(off, n int64) error { return f.Zero(off, n, ZeroFast) }},
			}
			for _, op := range ops {
				if err := op.do(op.off, op.n); err != nil {
					t.Fatalf("%s(off=%d, len=%d) = %v", op.name, op.off, op.n, err)
				}
				clear(all[op.off : op.off+op.n])
			}
			// Read through a fresh handle too: the ioctls must not leave
			// stale pages in the device's cache.
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			g := openT(t, dev, Options{})
			got := readBack(t, g, 0, size)
			for _, op := range ops {
				if !bytes.Equal(got[op.off:op.off+op.n], all[op.off:op.off+op.n]) {
					t.Errorf("ReadAt(off=%d, len=%d) after %s = not zeroes", op.off, op.n, op.name)
				}
			}
			if !bytes.Equal(got, all) {
				t.Errorf("contents outside the zeroed ranges changed")
			}
		})
	}
}

func TestLoopInUse(t *testing.T) {
	dev := loopDevice(t, "", 16<<20)
	mountExt4(t, dev)
	_, err := Open(dev, Options{})
	if !errors.Is(err, ErrInUse) || !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("Open(mounted %s) = %v, want ErrInUse and EBUSY", dev, err)
	}
	for _, want := range []string{dev, "unmount", "allow_in_use: true"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Open(mounted) error %q does not say %q", err, want)
		}
	}
	f := openT(t, dev, Options{AllowInUse: true, ReadOnly: true})
	if !f.Describe().InUse {
		t.Errorf("Describe().InUse = false for a mounted device")
	}
	if _, err := f.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Errorf("ReadAt(off=0) with AllowInUse = %v", err)
	}

	// We hold it exclusively too: nobody may mount it under us.
	free := loopDevice(t, "", 16<<20)
	run(t, "mkfs.ext4", "-q", "-F", free)
	g := openT(t, free, Options{})
	if g.Describe().InUse {
		t.Errorf("Describe().InUse = true for an unused device")
	}
	if out, err := exec.Command("mount", "-t", "ext4", free, t.TempDir()).CombinedOutput(); err == nil {
		exec.Command("umount", free).Run()
		t.Errorf("mount of a device held by Open succeeded, want busy: %s", out)
	}
}

func TestLoopDetach(t *testing.T) {
	dev := loopDevice(t, "", 1<<20)
	f := openT(t, dev, Options{})
	run(t, "losetup", "--detach", dev)
	// Linux defers the detach until the last close, so I/O may go on;
	// whatever it does, it must not panic.
	buf := make([]byte, 4096)
	if _, err := f.WriteAt(buf, 0); err != nil {
		t.Logf("WriteAt after detach = %v", err)
	}
	if _, err := f.ReadAt(buf, 8192); err != nil {
		t.Logf("ReadAt after detach = %v", err)
	}
	f.Close()
	if g, err := Open(dev, Options{}); err == nil {
		g.Close()
		t.Errorf("Open(%s) of a detached loop device = nil error", dev)
	} else if !strings.Contains(err.Error(), dev) {
		t.Errorf("Open(detached) = %v, want an error naming %s", err, dev)
	}
}

// ReadAtCached reads a block device as ReadAt does.
func TestLoopReadAtCached(t *testing.T) {
	f := openT(t, loopDevice(t, "", 4<<20), Options{})
	want := pattern(1<<20, 0x5a)
	if _, err := f.WriteAt(want, 1<<20); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if n, err := f.ReadAtCached(got, 1<<20); n != len(got) || err != nil || !bytes.Equal(got, want) {
		t.Errorf("ReadAtCached = %d, %v, same bytes %v", n, err, bytes.Equal(got, want))
	}
	if n, err := f.ReadAtCached(got[:4096], f.Size()-512); n != 512 || err != io.EOF {
		t.Errorf("ReadAtCached past the end = %d, %v; want 512, io.EOF", n, err)
	}
}

// TestLoopVanished makes the storage under a loop device fail (an ext4 file
// system shut down as if its disk had gone) and checks that reads, writes
// and flushes fail with EIO instead of hanging or panicking.
func TestLoopVanished(t *testing.T) {
	switch runtime.GOARCH {
	case "amd64", "386", "arm", "arm64", "riscv64", "loong64":
	default:
		t.Skip("EXT4_IOC_SHUTDOWN number is computed for the generic ioctl encoding")
	}
	const ext4IocShutdown = 2<<30 | 4<<16 | 'X'<<8 | 125 // _IOR('X', 125, __u32)
	const noLogFlush = 2                                 // EXT4_GOING_FLAGS_NOLOGFLUSH

	outer := loopDevice(t, "", 32<<20)
	mnt := mountExt4(t, outer)
	inner := loopDevice(t, mnt, 4<<20)
	f := openT(t, inner, Options{})
	if _, err := f.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatalf("ReadAt(off=0) before shutdown = %v", err)
	}

	d, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	flag := uint32(noLogFlush)
	_, _, e := unix.Syscall(unix.SYS_IOCTL, d.Fd(), ext4IocShutdown, uintptr(unsafe.Pointer(&flag)))
	d.Close()
	if e != 0 {
		t.Fatalf("EXT4_IOC_SHUTDOWN = %v", e)
	}

	if _, err := f.ReadAt(make([]byte, 4096), 1<<20); !errors.Is(err, syscall.EIO) {
		t.Errorf("ReadAt(off=1048576) after shutdown = %v, want EIO", err)
	}
	if _, err := f.ReadAtCached(make([]byte, 4096), 3<<20); !errors.Is(err, syscall.EIO) {
		t.Errorf("ReadAtCached(off=3145728) after shutdown = %v, want EIO", err)
	}
	if _, err := f.WriteAt(make([]byte, 4096), 2<<20); err != nil {
		t.Logf("WriteAt after shutdown = %v (cached writes may succeed)", err)
	}
	if err := f.Flush(); !errors.Is(err, syscall.EIO) {
		t.Errorf("Flush() after shutdown = %v, want EIO", err)
	}
}

// A raw write that runs out of space fails as WriteAt does, with ENOSPC,
// which the server sends the client as NBD_ENOSPC: here on a 1 MiB tmpfs
// holding a sparse 4 MiB image.
func TestWriteAtCachedOutOfSpace(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	run(t, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir)
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	f := openT(t, newImage(t, dir, 4<<20), Options{})
	p := pattern(2<<20, 0x5a)
	n, err := WriteAtCached(f, p, 0)
	if !errors.Is(err, syscall.ENOSPC) || n >= len(p) {
		t.Fatalf("WriteAtCached of 2 MiB on a 1 MiB tmpfs = %d, %v; want fewer bytes and ENOSPC", n, err)
	}
	if _, err := f.WriteAt(p, 0); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("WriteAt of 2 MiB on a 1 MiB tmpfs = %v; want ENOSPC", err)
	}
}
