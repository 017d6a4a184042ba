//go:build !unix

package nbd

// blockInput is unknown outside Unix (see blockinput_unix.go): crowded
// reads are then judged by their time alone.
func blockInput() int64 { return -1 }
