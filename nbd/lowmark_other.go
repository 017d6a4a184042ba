//go:build !linux

package nbd

// Elsewhere the reader never sets the socket's low-water mark
// (lowmark_linux.go).

type lowMark struct {
	v     int
	never bool
}

func (r *sockReader) canMark() bool { return false }
func (m *lowMark) clear(int)        {}
