package backend

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fsDirs returns directories on the file systems worth testing: the test's
// temporary directory (ext4 here) and tmpfs, which lacks ZERO_RANGE.
func fsDirs(t *testing.T) map[string]string {
	dirs := map[string]string{"tempdir": t.TempDir()}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "boardnbd-test")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		dirs["tmpfs"] = d
	}
	return dirs
}

// allocated returns the bytes the file system allocated for path.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// extents returns all extents of [off, off+length), calling Extents until
// the range is covered.
func extents(t *testing.T, b Backend, off, length int64) []Extent {
	t.Helper()
	var all []Extent
	for end := off + length; off < end; {
		got, err := b.Extents(nil, off, end-off)
		if err != nil || len(got) == 0 {
			t.Fatalf("Extents(off=%d, len=%d) = %v, %v", off, end-off, got, err)
		}
		for _, e := range got {
			if n := len(all); n > 0 && all[n-1].Flags == e.Flags {
				all[n-1].Length += e.Length
			} else {
				all = append(all, e)
			}
			off += e.Length
		}
	}
	return all
}

func TestFileHoles(t *testing.T) {
	const size = 1 << 20
	for name, dir := range fsDirs(t) {
		t.Run(name, func(t *testing.T) {
			path := newImage(t, dir, size)
			f := openT(t, path, Options{})
			info := f.Info()
			if !info.CanTrim || !info.CanFastZero || !info.CanExtents || !info.SharedCache {
				t.Fatalf("Info() = %+v, want CanTrim, CanFastZero, CanExtents, SharedCache", info)
			}
			if got := extents(t, f, 0, size); !reflect.DeepEqual(got, []Extent{{size, hole}}) {
				t.Errorf("Extents of a new sparse file = %v, want one hole", got)
			}
			if _, err := f.WriteAt(pattern(size, 9), 0); err != nil {
				t.Fatal(err)
			}
			if got := extents(t, f, 0, size); !reflect.DeepEqual(got, []Extent{{size, 0}}) {
				t.Errorf("Extents of a written file = %v, want one data extent", got)
			}

			// Each step zeroes [off, off+n) of the written file. Ranges
			// zeroed without ZeroNoHole must become holes; with it the
			// allocation must stay (tmpfs lists allocated but unwritten
			// pages as holes, so only the allocation is checked).
			steps := []struct {
				name   string
				do     func() error
				off, n int64
				noHole bool
			}{
				{"Trim", func() error { return f.Trim(64<<10, 64<<10) }, 64 << 10, 64 << 10, false},
				{"Zero", func() error { return f.Zero(256<<10, 64<<10, 0) }, 256 << 10, 64 << 10, false},
				{"Zero NoHole", func() error { return f.Zero(512<<10, 64<<10, ZeroNoHole) }, 512 << 10, 64 << 10, true},
				{"Zero Fast", func() error { return f.Zero(768<<10, 64<<10, ZeroFast) }, 768 << 10, 64 << 10, false},
				{"Zero Fast NoHole", func() error { return f.Zero(0, 4096, ZeroFast|ZeroNoHole) }, 0, 4096, true},
			}
			for _, s := range steps {
				before := allocated(t, path)
				if err := s.do(); err != nil {
					t.Fatalf("%s(off=%d, len=%d) = %v, want nil", s.name, s.off, s.n, err)
				}
				if got := readBack(t, f, s.off, int(s.n)); !bytes.Equal(got, make([]byte, s.n)) {
					t.Errorf("ReadAt(off=%d) after %s = not zeroes", s.off, s.name)
				}
				after := allocated(t, path)
				if s.noHole {
					if after != before {
						t.Errorf("allocated bytes after %s = %d, want %d as before", s.name, after, before)
					}
					continue
				}
				if after != before-s.n {
					t.Errorf("allocated bytes after %s = %d, want %d", s.name, after, before-s.n)
				}
				if got := extents(t, f, s.off, s.n); !reflect.DeepEqual(got, []Extent{{s.n, hole}}) {
					t.Errorf("Extents(off=%d, len=%d) after %s = %v, want one hole", s.off, s.n, s.name, got)
				}
			}
			want := []Extent{{64 << 10, 0}, {64 << 10, hole}, {128 << 10, 0}, {64 << 10, hole}, {448 << 10, 0}, {64 << 10, hole}, {size - 832<<10, 0}}
			if got := extents(t, f, 4096, size-4096); name != "tmpfs" && !reflect.DeepEqual(got, append([]Extent{{60 << 10, 0}}, want[1:]...)) {
				t.Errorf("Extents(off=4096) at the end = %v, want %v", got, want)
			}
		})
	}
}

func TestFileExtentsBounded(t *testing.T) {
	const n = 3 * maxExtents // data blocks, each followed by a hole
	const size = 2 * n * 4096
	f := openT(t, newImage(t, t.TempDir(), size), Options{})
	var want []Extent
	for i := int64(0); i < n; i++ {
		if _, err := f.WriteAt(pattern(4096, byte(i)), 2*i*4096); err != nil {
			t.Fatal(err)
		}
		want = append(want, Extent{4096, 0}, Extent{4096, hole})
	}
	got, err := f.Extents(nil, 0, size)
	if err != nil || len(got) == 0 || len(got) > maxExtents {
		t.Fatalf("Extents(off=0, len=%d) = %d extents, %v, want 1 to %d", size, len(got), err, maxExtents)
	}
	if all := extents(t, f, 0, size); !reflect.DeepEqual(all, want) {
		t.Errorf("Extents over %d alternating blocks = %d extents, want %d", n, len(all), len(want))
	}
	// An unaligned query starts and ends where asked.
	got, err = f.Extents([]Extent{{1, 0}}, 100, 4096)
	if wantU := []Extent{{1, 0}, {3996, 0}, {100, hole}}; err != nil || !reflect.DeepEqual(got, wantU) {
		t.Errorf("Extents(dst=[1 data], off=100, len=4096) = %v, %v, want %v", got, err, wantU)
	}
}

func TestOpenCreateSparse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new.img")
	f := openT(t, path, Options{Create: 8 << 30})
	if got := allocated(t, path); got != 0 {
		t.Errorf("Open(Create: 8 GiB) allocated %d bytes, want 0", got)
	}
	if got := extents(t, f, 0, f.Size()); !reflect.DeepEqual(got, []Extent{{8 << 30, hole}}) {
		t.Errorf("Extents of a created file = %v, want one hole", got)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("created file mode = %v, %v, want 0600", st.Mode(), err)
	}
}

func TestOpenNotStorage(t *testing.T) {
	dir := t.TempDir()
	for _, path := range []string{dir, "/dev/null"} {
		if f, err := Open(path, Options{}); err == nil {
			f.Close()
			t.Errorf("Open(%s) = nil error, want neither file nor block device", path)
		}
	}
}

func TestFileSymlink(t *testing.T) {
	dir := t.TempDir()
	path := newImage(t, dir, 4096)
	link := filepath.Join(dir, "by-id")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	d := openT(t, link, Options{}).Describe()
	want, _ := filepath.EvalSymlinks(path)
	if d.Path != link || d.ResolvedPath != want {
		t.Errorf("Describe() paths = %q, %q, want %q, %q", d.Path, d.ResolvedPath, link, want)
	}
	if s := fmt.Sprint(d.Kind); s != "image file" {
		t.Errorf("Kind = %q, want %q", s, "image file")
	}
}

func TestOpenNotWritable(t *testing.T) {
	path := newImage(t, t.TempDir(), 4096)
	// Root may write any mode; only an immutable file stops it.
	if os.Geteuid() == 0 {
		if out, err := exec.Command("chattr", "+i", path).CombinedOutput(); err != nil {
			t.Skipf("chattr +i: %v: %s", err, out)
		}
		t.Cleanup(func() { exec.Command("chattr", "-i", path).Run() })
	} else if err := os.Chmod(path, 0o400); err != nil {
		t.Fatal(err)
	}
	_, err := Open(path, Options{})
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "readonly: true") {
		t.Errorf("Open(not writable) = %v, want an error naming the file and readonly: true", err)
	}
	f := openT(t, path, Options{ReadOnly: true})
	if _, err := f.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Errorf("ReadAt(off=0) read-only = %v", err)
	}
}

// A fully allocated image has no holes: Extents answers from fstat alone,
// without walking the file (slow on tmpfs), and still says "data".
func TestFileExtentsFullyAllocated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "full.img")
	if err := os.WriteFile(path, bytes.Repeat([]byte{1}, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f := openT(t, path, Options{})
	got := extents(t, f, 4096, 64<<10)
	if len(got) != 1 || got[0] != (Extent{Length: 64 << 10}) {
		t.Errorf("Extents(off=4096, len=64K) of a full file = %v, want one data extent", got)
	}
}

func TestFileWriteAtFUA(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.img")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f := openT(t, path, Options{})
	s, err := NewSlice(f, 4096, 8192)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := WriteAtFUA(s, []byte("durable"), 100); n != 7 || err != nil {
		t.Fatalf("WriteAtFUA(slice, off=100) = %d, %v", n, err)
	}
	got, _ := os.ReadFile(path)
	if string(got[4196:4203]) != "durable" {
		t.Errorf("file at 4196 = %q, want the FUA write through the slice", got[4196:4203])
	}
	if _, err := WriteAtFUA(s, []byte("x"), 8192); err == nil {
		t.Errorf("WriteAtFUA past the slice succeeded")
	}
	ro := openT(t, path, Options{ReadOnly: true})
	if _, err := ro.WriteAtFUA([]byte("x"), 0); !errors.Is(err, ErrReadOnly) {
		t.Errorf("WriteAtFUA on a read-only file = %v, want ErrReadOnly", err)
	}
}

// pipeT returns a non-blocking pipe of at least size bytes, closed when the
// test ends.
func pipeT(t *testing.T, size int) (r, w int) {
	t.Helper()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	if _, err := unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, size); err != nil {
		t.Fatal(err)
	}
	return fds[0], fds[1]
}

// drain reads n bytes from a non-blocking pipe that holds them.
func drain(t *testing.T, r, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	for got := 0; got < n; {
		k, err := unix.Read(r, b[got:])
		if err != nil || k == 0 {
			t.Fatalf("reading the pipe after %d of %d bytes: %d, %v", got, n, k, err)
		}
		got += k
	}
	return b
}

func TestFileReadToPipe(t *testing.T) {
	for name, dir := range fsDirs(t) {
		t.Run(name, func(t *testing.T) {
			data := make([]byte, 1<<20)
			for i := range data {
				data[i] = byte(i * 7 / 4096)
			}
			path := filepath.Join(dir, "p.img")
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			f := openT(t, path, Options{})
			page := os.Getpagesize()

			for _, cached := range []bool{false, true} {
				r, w := pipeT(t, 256<<10)
				n, err := f.ReadToPipe(w, 100, 200<<10, cached)
				if err != nil || n != 200<<10 {
					t.Fatalf("ReadToPipe(off=100, 200 KiB, cached=%v) = %d, %v", cached, n, err)
				}
				if got := drain(t, r, n); !bytes.Equal(got, data[100:100+n]) {
					t.Fatalf("ReadToPipe(cached=%v): the pipe's bytes differ from the file's", cached)
				}
			}

			// A pipe too small for the range: it takes what fits, whole
			// pages' worth, and says so by the count alone.
			r, w := pipeT(t, 16*page)
			n, err := f.ReadToPipe(w, int64(page)/2, 64*page, false)
			if err != nil || n != 16*page-page/2 {
				t.Fatalf("ReadToPipe into a %d-page pipe = %d, %v; want %d, nil", 16, n, err, 16*page-page/2)
			}
			if got := drain(t, r, n); !bytes.Equal(got, data[page/2:page/2+n]) {
				t.Fatal("short ReadToPipe: the pipe's bytes differ from the file's")
			}

			if _, err := f.ReadToPipe(w, 1<<20-10, 11, false); err == nil {
				t.Error("ReadToPipe past the end: no error")
			}

			// The file truncated under the export: an error, as ReadAt's.
			if err := os.Truncate(path, 512<<10); err != nil {
				t.Fatal(err)
			}
			if _, err := f.ReadToPipe(w, 600<<10, 4096, false); !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("ReadToPipe past the truncated end = %v, want io.ErrUnexpectedEOF", err)
			}
		})
	}
}

func TestSliceReadToPipe(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.img")
	data := bytes.Repeat([]byte("0123456789abcdef"), 8192)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := NewSlice(openT(t, path, Options{}), 4096+3, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	r, w := pipeT(t, 128<<10)
	n, err := ReadToPipe(s, w, 10, 32<<10, false)
	if err != nil || n != 32<<10 {
		t.Fatalf("slice ReadToPipe = %d, %v", n, err)
	}
	if got := drain(t, r, n); !bytes.Equal(got, data[4096+3+10:4096+3+10+n]) {
		t.Fatal("slice ReadToPipe: the pipe's bytes are not the slice's")
	}
	if _, err := ReadToPipe(s, w, 60<<10, 8<<10, false); err == nil {
		t.Error("slice ReadToPipe past its end: no error")
	}
	if _, err := ReadToPipe(newMem(8192, Info{}), w, 0, 4096, false); !errors.Is(err, ErrNotSupported) {
		t.Errorf("ReadToPipe of storage without it = %v, want ErrNotSupported", err)
	}
}

func TestOverlayReadToPipe(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "base.img")
	base := bytes.Repeat([]byte("base"), 1<<16) // 256 KiB
	if err := os.WriteFile(path, base, 0o600); err != nil {
		t.Fatal(err)
	}
	o := newOverlayT(t, openT(t, path, Options{ReadOnly: true}), filepath.Join(dir, "o.ov"), true)
	// Blocks 2, 3 and 10 written: runs of base, overlay, base, overlay, base.
	for _, wr := range []struct{ off, n int }{{2 << 12, 8192}, {10 << 12, 4096}} {
		if _, err := o.WriteAt(bytes.Repeat([]byte{'O'}, wr.n), int64(wr.off)); err != nil {
			t.Fatal(err)
		}
	}
	want := make([]byte, 200<<10)
	if _, err := o.ReadAt(want, 100); err != nil {
		t.Fatal(err)
	}

	r, w := pipeT(t, 256<<10)
	n, err := ReadToPipe(o, w, 100, len(want), false)
	if err != nil || n != len(want) {
		t.Fatalf("overlay ReadToPipe = %d, %v", n, err)
	}
	if got := drain(t, r, n); !bytes.Equal(got, want) {
		t.Fatal("overlay ReadToPipe: the pipe's bytes differ from ReadAt's")
	}

	// A pipe of 4 pages takes the runs that fit, and stops in the middle
	// of the one that does not.
	r, w = pipeT(t, 4*4096)
	n, err = ReadToPipe(o, w, 0, len(want), false)
	if err != nil || n != 4*4096 {
		t.Fatalf("overlay ReadToPipe into 4 pages = %d, %v; want 16384, nil", n, err)
	}
	if got := drain(t, r, n); !bytes.Equal(got, append(base[:8192:8192], bytes.Repeat([]byte{'O'}, 8192)...)) {
		t.Fatal("overlay ReadToPipe into 4 pages: other bytes than the base's then the overlay's")
	}

	// Over a base that cannot splice: the overlay's run first, then the
	// caller reads the rest; a base run first says not supported.
	om := newOverlayT(t, baseMem(256<<10), filepath.Join(dir, "m.ov"), true)
	if _, err := om.WriteAt(bytes.Repeat([]byte{'O'}, 8192), 0); err != nil {
		t.Fatal(err)
	}
	r, w = pipeT(t, 64<<10)
	if n, err := ReadToPipe(om, w, 0, 32<<10, false); err != nil || n != 8192 {
		t.Errorf("ReadToPipe over a base without it, overlay first = %d, %v; want 8192, nil", n, err)
	}
	drain(t, r, 8192)
	if _, err := ReadToPipe(om, w, 8192, 4096, false); !errors.Is(err, ErrNotSupported) {
		t.Errorf("ReadToPipe over a base without it, base first = %v, want ErrNotSupported", err)
	}
}
