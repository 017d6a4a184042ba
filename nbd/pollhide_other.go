//go:build !linux

package nbd

// pollHide exists only on Linux (pollhide_linux.go); elsewhere a sleeping
// reader's socket stays in the runtime's poller.
type pollHide struct{}

func newPollHide() *pollHide { return nil }

func (*pollHide) hide(int)              {}
func (*pollHide) show(int) error        { return nil }
func (*pollHide) writerWaits(int) error { return nil }
func (*pollHide) writerDone()           {}
