//go:build !linux

package nbd

import "sync/atomic"

// Outside Linux the socket is read and written with the system calls the
// runtime sees (see rawio_linux.go).

// sockWriter exists only on Linux; elsewhere replies go through net.Conn.
type sockWriter struct {
	hide         *pollHide
	sockBlocking *atomic.Bool
}

func newSockWriter(any) *sockWriter       { return nil }
func (*sockWriter) writev([][]byte) error { panic("unreachable") }
func (*sockWriter) writeSpliced([][]byte, int, int, bool) error {
	panic("unreachable")
}
