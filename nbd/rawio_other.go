//go:build !linux

package nbd

// Outside Linux the socket is read and written with the system calls the
// runtime sees (see rawio_linux.go).

// sockWriter exists only on Linux; elsewhere replies go through net.Conn.
type sockWriter struct{ hide *pollHide }

func newSockWriter(any) *sockWriter       { return nil }
func (*sockWriter) writev([][]byte) error { panic("unreachable") }
