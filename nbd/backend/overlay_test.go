package backend

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// baseMem returns an in-memory base of size bytes filled with a pattern.
func baseMem(size int64) *memBackend {
	m := newMem(size, Info{CanExtents: true, MinBlock: 512, PreferredBlock: 4096})
	m.WriteAt(pattern(int(size), 42), 0)
	m.calls = nil
	return m
}

// wroteBase reports the calls that would have changed the base.
func wroteBase(m *memBackend) []string {
	var w []string
	for _, c := range m.calls {
		if strings.HasPrefix(c, "WriteAt") || strings.HasPrefix(c, "Zero") || strings.HasPrefix(c, "Trim") {
			w = append(w, c)
		}
	}
	return w
}

func newOverlayT(t *testing.T, base Backend, path string, persistent bool) Backend {
	t.Helper()
	o, err := NewOverlay(base, path, persistent)
	if err != nil {
		t.Fatalf("NewOverlay(%s, persistent=%v) = %v", path, persistent, err)
	}
	return o
}

func TestOverlayIO(t *testing.T) {
	const size = 64<<10 + 1000 // the last block is partial
	tests := []struct {
		name   string
		do     func(o Backend) error
		off, n int64
		zero   bool
	}{
		{"partial block", nil, 100, 200, false},
		{"whole block", nil, 8192, 4096, false},
		{"across blocks", nil, 4000, 10000, false},
		{"into the last partial block", nil, size - 1500, 1500, false},
		{"the last partial block whole", nil, 64 << 10, 1000, false},
		{"twice the same block", nil, 150, 100, false},
		{"zero partial", nil, 20000, 100, true},
		{"zero whole blocks", nil, 24576, 8192, true},
		{"zero across", nil, 30000, 10000, true},
	}
	base := baseMem(size)
	o := newOverlayT(t, base, "", false)
	defer o.Close()
	model := bytes.Clone(base.data)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.zero {
				if err := o.Zero(tt.off, tt.n, 0); err != nil {
					t.Fatalf("Zero(off=%d, len=%d) = %v", tt.off, tt.n, err)
				}
				clear(model[tt.off : tt.off+tt.n])
			} else {
				p := pattern(int(tt.n), byte(i))
				if n, err := o.WriteAt(p, tt.off); n != len(p) || err != nil {
					t.Fatalf("WriteAt(off=%d, len=%d) = %d, %v", tt.off, tt.n, n, err)
				}
				copy(model[tt.off:], p)
			}
			if got := readBack(t, o, 0, size); !bytes.Equal(got, model) {
				t.Errorf("ReadAt(off=0, len=%d) after %s differs from the model at %d", size, tt.name, firstDiff(got, model))
			}
		})
	}
	if w := wroteBase(base); w != nil {
		t.Errorf("the base was changed: %q", w)
	}
	if !bytes.Equal(base.data, pattern(size, 42)) {
		t.Errorf("the base's bytes changed")
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestOverlayModel runs random operations against an overlay and a byte
// slice and compares them.
func TestOverlayModel(t *testing.T) {
	for _, persistent := range []bool{false, true} {
		t.Run(fmt.Sprintf("persistent=%v", persistent), func(t *testing.T) {
			const size = 256<<10 + 512
			base := baseMem(size)
			path := filepath.Join(t.TempDir(), "cow")
			o := newOverlayT(t, base, path, persistent)
			model := bytes.Clone(base.data)
			r := rand.New(rand.NewPCG(1, 2))
			for i := range 300 {
				off := r.Int64N(size)
				n := 1 + r.Int64N(min(size-off, 20000))
				switch r.IntN(5) {
				case 0:
					if err := o.Zero(off, n, ZeroFlags(r.IntN(2))); err != nil {
						t.Fatalf("op %d: Zero(off=%d, len=%d) = %v", i, off, n, err)
					}
					clear(model[off : off+n])
				case 1:
					if err := o.Flush(); err != nil {
						t.Fatalf("op %d: Flush() = %v", i, err)
					}
				default:
					p := pattern(int(n), byte(i))
					if _, err := o.WriteAt(p, off); err != nil {
						t.Fatalf("op %d: WriteAt(off=%d, len=%d) = %v", i, off, n, err)
					}
					copy(model[off:], p)
				}
				got := make([]byte, n)
				readOff := r.Int64N(size - n + 1)
				if _, err := o.ReadAt(got, readOff); err != nil {
					t.Fatalf("op %d: ReadAt(off=%d) = %v", i, readOff, err)
				}
				if !bytes.Equal(got, model[readOff:readOff+n]) {
					t.Fatalf("op %d: ReadAt(off=%d, len=%d) differs from the model", i, readOff, n)
				}
			}
			if got := readBack(t, o, 0, size); !bytes.Equal(got, model) {
				t.Fatalf("ReadAt(whole) differs from the model at %d", firstDiff(got, model))
			}
			if err := o.Close(); err != nil {
				t.Fatalf("Close() = %v", err)
			}
			if !base.closed {
				t.Errorf("Close() did not close the base")
			}
			if w := wroteBase(base); w != nil {
				t.Errorf("the base was changed: %q", w)
			}
			_, err := os.Stat(path)
			if !persistent {
				if !errors.Is(err, os.ErrNotExist) {
					t.Errorf("temporary overlay %s after Close: %v, want gone", path, err)
				}
				return
			}
			// It survives a restart over a fresh handle on the base.
			base2 := baseMem(size)
			o2 := newOverlayT(t, base2, path, true)
			defer o2.Close()
			if got := readBack(t, o2, 0, size); !bytes.Equal(got, model) {
				t.Errorf("ReadAt(whole) after reopening differs from the model at %d", firstDiff(got, model))
			}
		})
	}
}

// TestOverlayCrash reopens a persistent overlay that was not closed: what
// was flushed is there, what was not reads as either the base or the write.
func TestOverlayCrash(t *testing.T) {
	const size = 64 << 10
	path := filepath.Join(t.TempDir(), "cow")
	o := newOverlayT(t, baseMem(size), path, true)
	defer o.Close()
	flushed := pattern(4096, 1)
	o.WriteAt(flushed, 0)
	if err := o.Flush(); err != nil {
		t.Fatal(err)
	}
	o.WriteAt(pattern(4096, 2), 8192) // never flushed

	o2 := newOverlayT(t, baseMem(size), path, true)
	defer o2.Close()
	if got := readBack(t, o2, 0, 4096); !bytes.Equal(got, flushed) {
		t.Errorf("ReadAt(off=0) after a crash = not the flushed write")
	}
	if got := readBack(t, o2, 8192, 4096); !bytes.Equal(got, pattern(size, 42)[8192:12288]) {
		t.Errorf("ReadAt(off=8192) after a crash = not the base (the unflushed block is not in the bitmap)")
	}
}

func TestOverlayOpenErrors(t *testing.T) {
	dir := t.TempDir()
	cow := filepath.Join(dir, "cow")
	o := newOverlayT(t, baseMem(64<<10), cow, true)
	o.Close()
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, make([]byte, 8192), 0o600)
	tests := []struct {
		name       string
		base       Backend
		path       string
		persistent bool
		wantErr    string
	}{
		{"other base size", baseMem(32 << 10), cow, true, "made for a 65536-byte base, but this base is 32768 bytes"},
		{"not an overlay", baseMem(64 << 10), junk, true, "not a boardnbd overlay"},
		{"temporary over an existing file", baseMem(64 << 10), cow, false, "exists"},
		{"persistent without a path", baseMem(64 << 10), "", true, "needs a path"},
		{"missing directory", baseMem(64 << 10), filepath.Join(dir, "no", "cow"), true, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := NewOverlay(tt.base, tt.path, tt.persistent)
			if err == nil {
				o.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("NewOverlay(%s, %v) = %v, want error containing %q", tt.path, tt.persistent, err, tt.wantErr)
			}
		})
	}
	if st, err := os.Stat(cow); err != nil || st.Size() == 0 {
		t.Errorf("the persistent overlay was damaged by the failed opens: %v", err)
	}
}

// TestOverlayConcurrentCopyUp writes disjoint pieces of the same blocks
// from many goroutines, and whole blocks over some of them: no copy-up may
// bring back base bytes over another goroutine's write.
func TestOverlayConcurrentCopyUp(t *testing.T) {
	const size = 256 << 10
	const piece = 512
	base := baseMem(size)
	o := newOverlayT(t, base, "", false)
	defer o.Close()
	want := pattern(size, 7)
	var wg sync.WaitGroup
	write := func(off, n int64) {
		if _, err := o.WriteAt(want[off:off+n], off); err != nil {
			t.Errorf("WriteAt(off=%d, len=%d) = %v", off, n, err)
		}
	}
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := int64(g * piece); off < size; off += 8 * piece {
				write(off, piece)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for off := int64(4096); off < size; off += 3 * 4096 {
			write(off, 8192)
		}
	}()
	wg.Wait()
	if got := readBack(t, o, 0, size); !bytes.Equal(got, want) {
		t.Errorf("after concurrent copy-ups the contents differ at %d", firstDiff(got, want))
	}
}

func TestOverlayExtents(t *testing.T) {
	dir := t.TempDir()
	f := openT(t, newImage(t, dir, 64<<10), Options{ReadOnly: true})
	if !f.Info().CanExtents {
		t.Skip("no extents on this platform")
	}
	base, err := NewSlice(f, 0, 64<<10) // any Backend will do
	if err != nil {
		t.Fatal(err)
	}
	o := newOverlayT(t, base, "", false)
	defer o.Close()
	o.WriteAt(pattern(8192, 1), 16384) // blocks 4 and 5
	o.Zero(40960, 4096, 0)             // block 10: allocated in the overlay, a hole in its file
	got, err := o.Extents(nil, 0, 64<<10)
	want := []Extent{{16384, hole}, {8192, 0}, {40960, hole}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Extents(off=0) = %v, %v, want %v", got, err, want)
	}
	if got := readBack(t, o, 16384, 8192); !bytes.Equal(got, pattern(8192, 1)) {
		t.Errorf("ReadAt(off=16384) = not what was written")
	}
}
