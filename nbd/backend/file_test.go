package backend

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// pattern returns n bytes that differ from zeroes and from each other at
// every offset that matters here.
func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7+int(i>>12)) ^ seed | 1
	}
	return p
}

// newImage writes an image file of size bytes (sparse) under dir.
func newImage(t testing.TB, dir string, size int64) string {
	t.Helper()
	path := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	return path
}

func openT(t testing.TB, path string, opts Options) *File {
	t.Helper()
	f, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open(%s, %+v) = %v", path, opts, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// readBack reads [off, off+n) from b, failing the test on error.
func readBack(t testing.TB, b Backend, off int64, n int) []byte {
	t.Helper()
	p := make([]byte, n)
	if got, err := b.ReadAt(p, off); err != nil && !(err == io.EOF && got == n) {
		t.Fatalf("ReadAt(off=%d, len=%d) = %d, %v", off, n, got, err)
	}
	return p
}

func TestFileReadWrite(t *testing.T) {
	const size = 1 << 20
	f := openT(t, newImage(t, t.TempDir(), size), Options{})
	tests := []struct {
		name string
		off  int64
		n    int
	}{
		{"first byte", 0, 1},
		{"aligned block", 4096, 4096},
		{"unaligned across blocks", 4000, 10000},
		{"last byte", size - 1, 1},
		{"last block", size - 4096, 4096},
		{"large", 64 << 10, 300 << 10},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := pattern(tt.n, byte(i))
			if n, err := f.WriteAt(want, tt.off); n != tt.n || err != nil {
				t.Fatalf("WriteAt(off=%d, len=%d) = %d, %v, want %d, nil", tt.off, tt.n, n, err, tt.n)
			}
			if got := readBack(t, f, tt.off, tt.n); !bytes.Equal(got, want) {
				t.Errorf("ReadAt(off=%d) after WriteAt returned other bytes", tt.off)
			}
		})
	}
	if err := f.Flush(); err != nil {
		t.Errorf("Flush() = %v, want nil", err)
	}
}

func TestFileBounds(t *testing.T) {
	const size = 64 << 10
	f := openT(t, newImage(t, t.TempDir(), size), Options{})
	if got := f.Size(); got != size {
		t.Errorf("Size() = %d, want %d", got, size)
	}
	reads := []struct {
		off     int64
		n       int
		wantN   int
		wantErr error
	}{
		{size - 10, 10, 10, nil},
		{size - 10, 20, 10, io.EOF},
		{size, 1, 0, io.EOF},
		{size + 4096, 1, 0, io.EOF},
	}
	for _, tt := range reads {
		n, err := f.ReadAt(make([]byte, tt.n), tt.off)
		if n != tt.wantN || err != tt.wantErr {
			t.Errorf("ReadAt(off=%d, len=%d) = %d, %v, want %d, %v", tt.off, tt.n, n, err, tt.wantN, tt.wantErr)
		}
	}
	for _, off := range []int64{-1, size - 1, size} {
		if _, err := f.WriteAt(make([]byte, 2), off); err == nil {
			t.Errorf("WriteAt(off=%d, len=2) = nil error, want out of range", off)
		}
	}
	if st, _ := os.Stat(f.Describe().Path); st.Size() != size {
		t.Errorf("file size after writes out of range = %d, want %d", st.Size(), size)
	}
}

func TestOpenSize(t *testing.T) {
	const size = 1 << 20
	path := newImage(t, t.TempDir(), size)
	tests := []struct {
		size    int64
		want    int64
		wantErr string // substring; "" for success
	}{
		{0, size, ""},
		{4096, 4096, ""},
		{size, size, ""},
		{1000, 1000, ""}, // image files have no sectors
		{size + 1, 0, "size 1048577 is larger than the image file (1048576 bytes)"},
		{-1, 0, "negative"},
	}
	for _, tt := range tests {
		f, err := Open(path, Options{Size: tt.size})
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Open(Size: %d) = %v, want error containing %q", tt.size, err, tt.wantErr)
			}
			if err == nil {
				f.Close()
			}
			continue
		}
		if err != nil {
			t.Errorf("Open(Size: %d) = %v", tt.size, err)
			continue
		}
		if got := f.Size(); got != tt.want {
			t.Errorf("Open(Size: %d).Size() = %d, want %d", tt.size, got, tt.want)
		}
		if d := f.Describe(); d.Size != tt.want || d.StorageSize != size {
			t.Errorf("Open(Size: %d).Describe() sizes = %d, %d, want %d, %d", tt.size, d.Size, d.StorageSize, tt.want, size)
		}
		f.Close()
	}
}

func TestOpenCreate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "new.img")
	f := openT(t, path, Options{Create: 1 << 30})
	if got := f.Size(); got != 1<<30 {
		t.Errorf("Open(Create: 1 GiB).Size() = %d, want %d", got, 1<<30)
	}
	if d := f.Describe(); d.Kind != KindImage || d.ReadOnly {
		t.Errorf("Describe() = kind %v, read-only %v, want image file, writable", d.Kind, d.ReadOnly)
	}
	f.Close()
	// An existing file is opened as it is.
	g := openT(t, path, Options{Create: 4096})
	if got := g.Size(); got != 1<<30 {
		t.Errorf("Open(existing, Create: 4096).Size() = %d, want %d", got, 1<<30)
	}
	if _, err := Open(filepath.Join(dir, "missing", "x.img"), Options{Create: 4096}); err == nil {
		t.Errorf("Open(Create in a missing directory) = nil error")
	}
	if _, err := Open(filepath.Join(dir, "absent.img"), Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open(absent) = %v, want ErrNotExist", err)
	}
}

func TestFileReadOnly(t *testing.T) {
	path := newImage(t, t.TempDir(), 64<<10)
	f := openT(t, path, Options{ReadOnly: true})
	if !f.Info().ReadOnly || f.Describe().ReadOnlyReason == "" {
		t.Errorf("Info().ReadOnly = %v, reason %q, want true and a reason", f.Info().ReadOnly, f.Describe().ReadOnlyReason)
	}
	ops := map[string]func() error{
		"WriteAt": func() error { _, err := f.WriteAt([]byte{1}, 0); return err },
		"Trim":    func() error { return f.Trim(0, 4096) },
		"Zero":    func() error { return f.Zero(0, 4096, 0) },
	}
	for name, op := range ops {
		if err := op(); !errors.Is(err, ErrReadOnly) {
			t.Errorf("%s on read-only file = %v, want ErrReadOnly", name, err)
		}
	}
	if err := f.Flush(); err != nil {
		t.Errorf("Flush() on read-only file = %v, want nil", err)
	}
}

func TestFileZeroContent(t *testing.T) {
	const size = 256 << 10
	for _, flags := range []ZeroFlags{0, ZeroNoHole} {
		for _, r := range []struct{ off, n int64 }{{0, 4096}, {100, 5000}, {8192, 64 << 10}, {size - 7, 7}} {
			f := openT(t, newImage(t, t.TempDir(), size), Options{})
			all := pattern(size, 3)
			if _, err := f.WriteAt(all, 0); err != nil {
				t.Fatal(err)
			}
			if err := f.Zero(r.off, r.n, flags); err != nil {
				t.Fatalf("Zero(off=%d, len=%d, %d) = %v", r.off, r.n, flags, err)
			}
			clear(all[r.off : r.off+r.n])
			if got := readBack(t, f, 0, size); !bytes.Equal(got, all) {
				t.Errorf("after Zero(off=%d, len=%d, %d): contents differ from the expected", r.off, r.n, flags)
			}
			f.Close()
		}
	}
}

// chunkRecorder is an io.WriterAt that records the writes it gets.
type chunkRecorder struct {
	offs, lens []int64
	failAt     int
}

func (c *chunkRecorder) WriteAt(p []byte, off int64) (int, error) {
	if len(c.offs) == c.failAt {
		return 0, errors.New("disk on fire")
	}
	for _, b := range p {
		if b != 0 {
			return 0, errors.New("non-zero byte")
		}
	}
	c.offs, c.lens = append(c.offs, off), append(c.lens, int64(len(p)))
	return len(p), nil
}

func TestWriteZeroes(t *testing.T) {
	tests := []struct {
		off, n   int64
		wantLens []int64
	}{
		{0, 0, nil},
		{5, 1, []int64{1}},
		{0, zeroChunk, []int64{zeroChunk}},
		{10, 2*zeroChunk + 3, []int64{zeroChunk, zeroChunk, 3}},
	}
	for _, tt := range tests {
		c := &chunkRecorder{failAt: -1}
		if err := writeZeroes(c, tt.off, tt.n); err != nil {
			t.Fatalf("writeZeroes(off=%d, len=%d) = %v", tt.off, tt.n, err)
		}
		if len(c.lens) != len(tt.wantLens) {
			t.Fatalf("writeZeroes(off=%d, len=%d) wrote %v, want %v", tt.off, tt.n, c.lens, tt.wantLens)
		}
		next := tt.off
		for i := range c.lens {
			if c.lens[i] != tt.wantLens[i] || c.offs[i] != next {
				t.Errorf("writeZeroes(off=%d, len=%d) write %d = [%d, +%d), want [%d, +%d)",
					tt.off, tt.n, i, c.offs[i], c.lens[i], next, tt.wantLens[i])
			}
			next += c.lens[i]
		}
	}
	c := &chunkRecorder{failAt: 1}
	if err := writeZeroes(c, 0, 3*zeroChunk); err == nil || len(c.lens) != 1 {
		t.Errorf("writeZeroes with a failing second write = %v after %d writes, want the error after 1", err, len(c.lens))
	}
}

// memDir is a directory for benchmark images in tmpfs where there is one,
// so that they measure the page cache rather than a disk.
func memDir(b *testing.B) string {
	dir := "/dev/shm"
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return b.TempDir()
	}
	dir, err := os.MkdirTemp(dir, "boardnbd-bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func BenchmarkFile(b *testing.B) {
	const size = 64 << 20
	f := openT(b, newImage(b, memDir(b), size), Options{})
	if _, err := f.WriteAt(pattern(size, 1), 0); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 4096)
	b.Run("ReadAt4K", func(b *testing.B) {
		b.SetBytes(4096)
		var off int64
		for b.Loop() {
			if _, err := f.ReadAt(buf, off); err != nil {
				b.Fatal(err)
			}
			off = (off + 4096*17) % size
		}
	})
	b.Run("WriteAt4K", func(b *testing.B) {
		b.SetBytes(4096)
		var off int64
		for b.Loop() {
			if _, err := f.WriteAt(buf, off); err != nil {
				b.Fatal(err)
			}
			off = (off + 4096*17) % size
		}
	})
}
