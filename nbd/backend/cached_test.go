package backend

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
)

// TestReadAtCachedMatchesReadAt reads the same ranges of an image file, and
// of a slice of it, with ReadAt and with ReadAtCached: same bytes, counts
// and errors, at the end of the export too.
func TestReadAtCachedMatchesReadAt(t *testing.T) {
	const size = 1<<20 + 512
	path := newImage(t, t.TempDir(), size)
	want := pattern(size, 0x3c)
	if err := os.WriteFile(path, want, 0o600); err != nil {
		t.Fatal(err)
	}
	f := openT(t, path, Options{})
	s, err := NewSlice(f, 4096, size-4096)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []struct {
		name string
		b    Backend
		base int64 // offset of the backend's byte 0 in want
	}{{"file", f, 0}, {"slice", s, 4096}} {
		if _, ok := b.b.(CachedReader); !ok {
			t.Fatalf("%s: not a CachedReader", b.name)
		}
		n := b.b.Size()
		for _, r := range []struct{ off, len int64 }{
			{0, 4096}, {511, 1 << 20}, {n - 512, 512}, {n - 100, 512}, {n, 512}, {n, 0},
		} {
			p1, p2 := make([]byte, r.len), make([]byte, r.len)
			n1, err1 := b.b.ReadAt(p1, r.off)
			n2, err2 := ReadAtCached(b.b, p2, r.off)
			if n1 != n2 || err1 != err2 || !bytes.Equal(p1, p2) {
				t.Errorf("%s [%d, +%d): ReadAt = %d, %v; ReadAtCached = %d, %v, same bytes %v",
					b.name, r.off, r.len, n1, err1, n2, err2, bytes.Equal(p1, p2))
			}
			if end := min(r.off+r.len, n); n2 > 0 && !bytes.Equal(p2[:n2], want[b.base+r.off:b.base+end]) {
				t.Errorf("%s [%d, +%d): ReadAtCached read other bytes than the file holds", b.name, r.off, r.len)
			}
			if r.off+r.len > n && r.len > 0 && err2 != io.EOF {
				t.Errorf("%s [%d, +%d) past the end: err %v, want io.EOF", b.name, r.off, r.len, err2)
			}
		}
	}
}

// A backend without ReadAtCached is read with ReadAt.
func TestReadAtCachedFallsBack(t *testing.T) {
	m := newMem(1<<16, Info{})
	if _, err := m.WriteAt([]byte("boardnbd"), 100); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 8)
	if n, err := ReadAtCached(m, p, 100); n != 8 || err != nil || string(p) != "boardnbd" {
		t.Errorf("ReadAtCached on a plain backend = %d, %v, %q", n, err, p)
	}
}

// TestWriteAtCachedMatchesWriteAt writes the same ranges of two image
// files, and of slices of them, one with WriteAt and one with
// WriteAtCached: same counts and errors, same bytes in the files after,
// including refusals past the end and on a read-only file.
func TestWriteAtCachedMatchesWriteAt(t *testing.T) {
	const size = 1<<20 + 512
	open2 := func(opts Options) (Backend, Backend) {
		a, b := newImage(t, t.TempDir(), size), newImage(t, t.TempDir(), size)
		for _, path := range []string{a, b} {
			if err := os.WriteFile(path, pattern(size, 0x3c), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return openT(t, a, opts), openT(t, b, opts)
	}
	fa, fb := open2(Options{})
	sa, err := NewSlice(fa, 4096, size-4096)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := NewSlice(fb, 4096, size-4096)
	if err != nil {
		t.Fatal(err)
	}
	ra, rb := open2(Options{ReadOnly: true})
	for _, b := range []struct {
		name       string
		plain, raw Backend
	}{{"file", fa, fb}, {"slice", sa, sb}, {"read-only file", ra, rb}} {
		if _, ok := b.raw.(CachedWriter); !ok {
			t.Fatalf("%s: not a CachedWriter", b.name)
		}
		n := b.raw.Size()
		for i, r := range []struct{ off, len int64 }{
			{0, 4096}, {511, 1 << 20}, {n - 512, 512}, {n - 100, 512}, {n, 512}, {-1, 512}, {n, 0},
		} {
			p := pattern(int(r.len), byte(i))
			n1, err1 := b.plain.WriteAt(p, r.off)
			n2, err2 := WriteAtCached(b.raw, p, r.off)
			if n1 != n2 || sameFileErr(err1) != sameFileErr(err2) {
				t.Errorf("%s [%d, +%d): WriteAt = %d, %v; WriteAtCached = %d, %v",
					b.name, r.off, r.len, n1, err1, n2, err2)
			}
		}
		p1, p2 := make([]byte, n), make([]byte, n)
		if _, err := b.plain.ReadAt(p1, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := b.raw.ReadAt(p2, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p1, p2) {
			t.Errorf("%s: the files differ after the same writes", b.name)
		}
	}
}

// A backend without WriteAtCached is written with WriteAt.
func TestWriteAtCachedFallsBack(t *testing.T) {
	m := newMem(1<<16, Info{})
	if n, err := WriteAtCached(m, []byte("boardnbd"), 100); n != 8 || err != nil {
		t.Fatalf("WriteAtCached on a plain backend = %d, %v", n, err)
	}
	p := make([]byte, 8)
	if _, err := m.ReadAt(p, 100); err != nil || string(p) != "boardnbd" {
		t.Errorf("after WriteAtCached on a plain backend: %q, %v", p, err)
	}
}

// sameFileErr is err's text from the image's name on, so that the same
// error on two images in different directories reads the same.
func sameFileErr(err error) string {
	s := fmt.Sprint(err)
	if i := strings.Index(s, "disk.img"); i >= 0 {
		s = s[i:]
	}
	return s
}
