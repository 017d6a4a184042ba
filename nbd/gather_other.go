//go:build !linux

package nbd

// Elsewhere reads do not gather (gather_linux.go).

func (r *sockReader) gatherRead(uintptr) { panic("nbd: gatherRead without gathering") }
