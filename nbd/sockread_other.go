//go:build !unix

package nbd

import (
	"sync/atomic"
	"time"
)

// sockReader (sockread_unix.go) exists only on Unix; elsewhere
// newSockReader returns nil and connections read through net.Conn.
type sockReader struct {
	lone        bool
	tryFirst    bool
	payload     int
	lag         lagState
	mark        lowMark
	gather      int
	gatherIn    time.Duration
	gatherProbe bool
	gatherNap   bool
	gathered    int
	hide        *pollHide
	blocking    atomic.Bool
}

func newSockReader(any) *sockReader          { return nil }
func (*sockReader) Read([]byte) (int, error) { panic("unreachable") }
func (*sockReader) release()                 {}
func (*sockReader) tick(time.Time)           {}

var hotWait time.Duration
