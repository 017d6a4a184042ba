package backend

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

func TestNewSliceBounds(t *testing.T) {
	tests := []struct {
		name         string
		info         Info
		offset, size int64
		wantErr      string // "" for success
	}{
		{"whole", Info{}, 0, 1 << 20, ""},
		{"tail", Info{}, 1<<20 - 512, 512, ""},
		{"unaligned on bytes", Info{}, 3, 5, ""},
		{"negative offset", Info{}, -512, 512, "negative"},
		{"zero size", Info{}, 0, 0, "not positive"},
		{"past end", Info{}, 1 << 20, 512, "past the end of the 1048576-byte storage"},
		{"overflow", Info{}, 512, 1<<63 - 1, "past the end"},
		{"unaligned offset", Info{MinBlock: 4096}, 512, 4096, "not aligned to the storage's 4096-byte sectors"},
		{"unaligned size", Info{MinBlock: 4096}, 4096, 512, "not aligned"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewSlice(newMem(1<<20, tt.info), tt.offset, tt.size)
			if tt.wantErr == "" {
				if err != nil || s.Size() != tt.size {
					t.Fatalf("NewSlice(off=%d, size=%d) = %v, want size %d", tt.offset, tt.size, err, tt.size)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("NewSlice(off=%d, size=%d) = %v, want error containing %q", tt.offset, tt.size, err, tt.wantErr)
			}
		})
	}
}

func TestSliceInfo(t *testing.T) {
	tests := []struct {
		min, pref uint32
		offset    int64
		wantPref  uint32
	}{
		{512, 4096, 1 << 20, 4096},
		{512, 4096, 2048, 2048},
		{512, 4096, 512, 512},
		{4096, 65536, 8192, 8192},
		{0, 4096, 3, 512},
	}
	for _, tt := range tests {
		m := newMem(4<<20, Info{MinBlock: tt.min, PreferredBlock: tt.pref, CanTrim: true, SharedCache: true})
		s, err := NewSlice(m, tt.offset, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		got := s.Info()
		want := Info{MinBlock: tt.min, PreferredBlock: tt.wantPref, CanTrim: true, SharedCache: true}
		if got != want {
			t.Errorf("NewSlice(off=%d).Info() over %d/%d = %+v, want %+v", tt.offset, tt.min, tt.pref, got, want)
		}
	}
}

func TestSliceIO(t *testing.T) {
	const off, size = 4096, 16384
	m := newMem(32<<10, Info{})
	s, err := NewSlice(m, off, size)
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(size, 1)
	if n, err := s.WriteAt(data, 0); n != size || err != nil {
		t.Fatalf("WriteAt(off=0, len=%d) = %d, %v", size, n, err)
	}
	if !bytes.Equal(m.data[off:off+size], data) || !bytes.Equal(m.data[:off], make([]byte, off)) {
		t.Errorf("WriteAt through the slice landed elsewhere in the storage")
	}
	reads := []struct {
		off     int64
		n       int
		wantN   int
		wantErr error
	}{
		{0, size, size, nil},
		{size - 100, 100, 100, nil},
		{size - 100, 200, 100, io.EOF},
		{size, 1, 0, io.EOF},
	}
	for _, tt := range reads {
		p := make([]byte, tt.n)
		n, err := s.ReadAt(p, tt.off)
		if n != tt.wantN || err != tt.wantErr {
			t.Errorf("ReadAt(off=%d, len=%d) = %d, %v, want %d, %v", tt.off, tt.n, n, err, tt.wantN, tt.wantErr)
		}
		if !bytes.Equal(p[:n], data[tt.off:tt.off+int64(n)]) {
			t.Errorf("ReadAt(off=%d) returned other bytes", tt.off)
		}
	}
	for _, o := range []int64{-1, size - 1, size} {
		if _, err := s.WriteAt(make([]byte, 2), o); err == nil {
			t.Errorf("WriteAt(off=%d, len=2) = nil error, want out of range", o)
		}
		if err := s.Zero(o, 2, 0); err == nil {
			t.Errorf("Zero(off=%d, len=2) = nil error, want out of range", o)
		}
		if err := s.Trim(o, 2); err == nil {
			t.Errorf("Trim(off=%d, len=2) = nil error, want out of range", o)
		}
	}

	m.calls = nil
	s.Zero(512, 1024, ZeroNoHole)
	s.Trim(2048, 512)
	s.Flush()
	s.Close()
	want := []string{"Zero(4608, 1024, 1)", "Trim(6144, 512)", "Flush()", "Close()"}
	if !reflect.DeepEqual(m.calls, want) {
		t.Errorf("calls through the slice = %q, want %q", m.calls, want)
	}
}

func TestSliceExtents(t *testing.T) {
	// The storage: 4 KiB hole, 4 KiB data, 4 KiB hole, 4 KiB data.
	m := newMem(16<<10, Info{CanExtents: true})
	m.WriteAt(make([]byte, 4096), 4096)
	m.WriteAt(make([]byte, 4096), 12288)
	s, err := NewSlice(m, 2048, 8192) // [2048, 10240)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		off, n int64
		want   []Extent
	}{
		{0, 8192, []Extent{{2048, hole}, {4096, 0}, {2048, hole}}},
		{2048, 100, []Extent{{100, 0}}},
		{7000, 1192, []Extent{{1192, hole}}},
	}
	for _, tt := range tests {
		got, err := s.Extents([]Extent{{1, 0}}, tt.off, tt.n)
		if want := append([]Extent{{1, 0}}, tt.want...); err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("Extents(off=%d, len=%d) = %v, %v, want %v", tt.off, tt.n, got, err, want)
		}
	}
	// An inner backend that reports past the request is cut at the
	// slice's end, not at the request's.
	long := &longExtents{m}
	s2, _ := NewSlice(long, 0, 8192)
	got, err := s2.Extents(nil, 1000, 10)
	if want := []Extent{{7192, hole}}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Extents(off=1000, len=10) over a generous backend = %v, %v, want %v", got, err, want)
	}
	m.fail = errors.New("boom")
	if got, err := s.Extents([]Extent{{1, 0}}, 0, 10); err == nil || len(got) != 1 {
		t.Errorf("Extents with a failing backend = %v, %v, want the error and dst unchanged", got, err)
	}
}

// longExtents reports one hole to the end of the storage, whatever the
// request, as the Backend contract allows.
type longExtents struct{ *memBackend }

func (l *longExtents) Extents(dst []Extent, off, length int64) ([]Extent, error) {
	return append(dst, Extent{Length: l.Size() - off, Flags: hole}), nil
}

// TestSliceOfFile reads a "partition" of a whole-disk image.
func TestSliceOfFile(t *testing.T) {
	f := openT(t, newImage(t, t.TempDir(), 1<<20), Options{})
	part := pattern(64<<10, 4)
	f.WriteAt(part, 1<<19)
	s, err := NewSlice(f, 1<<19, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	if got := readBack(t, s, 0, len(part)); !bytes.Equal(got, part) {
		t.Errorf("ReadAt(off=0) of the slice is not the partition's bytes")
	}
	if err := s.Zero(4096, 4096, 0); err != nil {
		t.Fatal(err)
	}
	if !f.Info().CanExtents {
		return
	}
	got, err := s.Extents(nil, 0, 64<<10)
	if want := []Extent{{4096, 0}, {4096, hole}, {56 << 10, 0}}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Extents(off=0) of the slice = %v, %v, want %v", got, err, want)
	}
}
