package backend

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// memParts returns in-memory parts of the given sizes.
func memParts(info Info, sizes ...int64) ([]Backend, []*memBackend) {
	var parts []Backend
	var mems []*memBackend
	for _, s := range sizes {
		m := newMem(s, info)
		parts, mems = append(parts, m), append(mems, m)
	}
	return parts, mems
}

func TestMultiIO(t *testing.T) {
	sizes := []int64{4096, 0, 1536, 8192} // an empty part is skipped
	parts, mems := memParts(Info{}, sizes...)
	m, err := newMulti(parts, 0)
	if err != nil {
		t.Fatal(err)
	}
	const total = 4096 + 1536 + 8192
	if m.Size() != total {
		t.Fatalf("Size() = %d, want %d", m.Size(), total)
	}
	all := pattern(total, 2)
	if n, err := m.WriteAt(all, 0); n != total || err != nil {
		t.Fatalf("WriteAt(off=0, len=%d) = %d, %v", total, n, err)
	}
	// Each part holds its share.
	if !bytes.Equal(mems[0].data, all[:4096]) || !bytes.Equal(mems[2].data, all[4096:5632]) || !bytes.Equal(mems[3].data, all[5632:]) {
		t.Errorf("WriteAt across parts put the bytes in the wrong parts")
	}
	reads := []struct {
		off     int64
		n       int
		wantN   int
		wantErr error
	}{
		{0, 4096, 4096, nil},
		{4000, 200, 200, nil},                   // parts 0 and 2
		{4000, 2000, 2000, nil},                 // parts 0, 2 and 3
		{5632, 8192, 8192, nil},                 // exactly the last part
		{total - 10, 20, 10, io.EOF},            // past the end
		{total, 1, 0, io.EOF},                   // at the end
		{3000, total - 3000, total - 3000, nil}, // to the end
	}
	for _, tt := range reads {
		p := make([]byte, tt.n)
		n, err := m.ReadAt(p, tt.off)
		if n != tt.wantN || err != tt.wantErr {
			t.Errorf("ReadAt(off=%d, len=%d) = %d, %v, want %d, %v", tt.off, tt.n, n, err, tt.wantN, tt.wantErr)
		}
		if !bytes.Equal(p[:n], all[tt.off:tt.off+int64(n)]) {
			t.Errorf("ReadAt(off=%d, len=%d) returned other bytes", tt.off, tt.n)
		}
	}

	for _, mm := range mems {
		mm.calls = nil
	}
	if err := m.Zero(4000, 2000, ZeroNoHole); err != nil {
		t.Fatal(err)
	}
	if err := m.Trim(5000, 1000); err != nil {
		t.Fatal(err)
	}
	wantCalls := [][]string{
		{"Zero(4000, 96, 1)"},
		nil,
		{"Zero(0, 1536, 1)", "Trim(904, 632)"},
		{"Zero(0, 368, 1)", "Trim(0, 368)"},
	}
	for i, mm := range mems {
		if !reflect.DeepEqual(mm.calls, wantCalls[i]) {
			t.Errorf("part %d got calls %q, want %q", i, mm.calls, wantCalls[i])
		}
	}

	mems[2].fail = errors.New("part 2 on fire")
	if _, err := m.ReadAt(make([]byte, 200), 4000); err == nil || !strings.Contains(err.Error(), "fire") {
		t.Errorf("ReadAt across a failing part = %v, want its error", err)
	}
	if err := m.Flush(); err == nil {
		t.Errorf("Flush() with a failing part = nil error")
	}
	if err := m.Close(); err == nil {
		t.Errorf("Close() with a failing part = nil error")
	}
	for i, mm := range mems {
		if !mm.closed {
			t.Errorf("part %d not closed after Close()", i)
		}
	}
}

func TestMultiExtents(t *testing.T) {
	parts, mems := memParts(Info{CanExtents: true}, 2048, 2048, 2048)
	// data: part 0 [1536, 2048), part 1 [0, 512), part 2 nothing.
	mems[0].WriteAt(make([]byte, 512), 1536)
	mems[1].WriteAt(make([]byte, 512), 0)
	m, err := newMulti(parts, 0)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		off, n int64
		want   []Extent
	}{
		{0, 6144, []Extent{{1536, hole}, {1024, 0}, {3584, hole}}},
		{1600, 100, []Extent{{100, 0}}},
		{2100, 4000, []Extent{{460, 0}, {3540, hole}}},
	}
	for _, tt := range tests {
		got, err := m.Extents([]Extent{{7, hole}}, tt.off, tt.n)
		if want := append([]Extent{{7, hole}}, tt.want...); err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("Extents(off=%d, len=%d) = %v, %v, want %v", tt.off, tt.n, got, err, want)
		}
	}
}

func TestNewMultiChecks(t *testing.T) {
	tests := []struct {
		name    string
		info    Info
		sizes   []int64
		size    int64
		wantErr string
		want    int64
	}{
		{"limit", Info{}, []int64{100, 100}, 150, "", 150},
		{"limit too large", Info{}, []int64{100, 100}, 201, "size 201 is larger than the parts together (200 bytes)", 0},
		{"unaligned part", Info{MinBlock: 512}, []int64{1000, 1024}, 0, "part 0 is 1000 bytes, not a multiple of the 512-byte sectors", 0},
		{"unaligned last part is fine", Info{MinBlock: 512}, []int64{1024, 1000}, 0, "", 2024},
		{"unaligned limit", Info{MinBlock: 512}, []int64{1024, 1024}, 1000, "not a multiple", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parts, _ := memParts(tt.info, tt.sizes...)
			m, err := newMulti(parts, tt.size)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("newMulti(%v, %d) = %v, want error containing %q", tt.sizes, tt.size, err, tt.wantErr)
				}
				return
			}
			if err != nil || m.Size() != tt.want {
				t.Errorf("newMulti(%v, %d) = %v, want size %d", tt.sizes, tt.size, err, tt.want)
			}
		})
	}
}

func TestMultiInfo(t *testing.T) {
	a := newMem(4096, Info{CanTrim: true, CanFastZero: true, SharedCache: true, MinBlock: 512, PreferredBlock: 4096})
	b := newMem(4096, Info{CanTrim: true, CanExtents: true, SharedCache: true, Rotational: true, MinBlock: 4096, PreferredBlock: 4096})
	m, err := newMulti([]Backend{a, b}, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := Info{CanTrim: true, CanExtents: true, SharedCache: true, Rotational: true, MinBlock: 4096, PreferredBlock: 4096}
	if got := m.Info(); got != want {
		t.Errorf("Info() = %+v, want %+v", got, want)
	}
	if err := m.Zero(0, 8192, ZeroFast); !errors.Is(err, ErrNotSupported) || len(a.calls)+len(b.calls) != 0 {
		t.Errorf("Zero(ZeroFast) with a slow part = %v after calls %q %q, want ErrNotSupported and no calls", err, a.calls, b.calls)
	}
	ro := newMem(4096, Info{ReadOnly: true})
	m, _ = newMulti([]Backend{newMem(4096, Info{CanTrim: true}), ro}, 0)
	if got := m.Info(); !got.ReadOnly || got.CanTrim {
		t.Errorf("Info() with a read-only part = %+v, want read-only without trim", got)
	}
	if _, err := m.WriteAt([]byte{1}, 0); !errors.Is(err, ErrReadOnly) {
		t.Errorf("WriteAt with a read-only part = %v, want ErrReadOnly", err)
	}
}

func TestOpenMultifile(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "disk")
	sizes := []int64{8192, 4096, 12288}
	var all []byte
	for i, s := range sizes {
		p := pattern(int(s), byte(i))
		if err := os.WriteFile(fmt.Sprintf("%s.%d", base, i), p, 0o600); err != nil {
			t.Fatal(err)
		}
		all = append(all, p...)
	}
	m, err := OpenMultifile(base, Options{})
	if err != nil {
		t.Fatalf("OpenMultifile(%s) = %v", base, err)
	}
	defer m.Close()
	if m.Size() != int64(len(all)) {
		t.Errorf("Size() = %d, want %d", m.Size(), len(all))
	}
	if got := readBack(t, m, 0, len(all)); !bytes.Equal(got, all) {
		t.Errorf("ReadAt(off=0) over all parts returned other bytes")
	}
	want := pattern(10000, 9)
	if _, err := m.WriteAt(want, 5000); err != nil {
		t.Fatalf("WriteAt(off=5000, len=10000) = %v", err)
	}
	copy(all[5000:], want)
	if err := m.Flush(); err != nil {
		t.Errorf("Flush() = %v", err)
	}
	var onDisk []byte
	for i := range sizes {
		b, _ := os.ReadFile(fmt.Sprintf("%s.%d", base, i))
		onDisk = append(onDisk, b...)
	}
	if !bytes.Equal(onDisk, all) {
		t.Errorf("parts on disk after WriteAt across them differ from the expected")
	}

	for _, tt := range []struct {
		path    string
		opts    Options
		wantErr string
	}{
		{filepath.Join(dir, "none"), Options{}, "none.0"},
		{base, Options{Create: 4096}, "cannot create"},
		{base, Options{Size: 1 << 20}, "larger than the parts together"},
	} {
		if m, err := OpenMultifile(tt.path, tt.opts); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			if err == nil {
				m.Close()
			}
			t.Errorf("OpenMultifile(%s, %+v) = %v, want error containing %q", tt.path, tt.opts, err, tt.wantErr)
		}
	}
}
