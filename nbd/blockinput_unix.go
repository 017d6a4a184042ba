//go:build unix

package nbd

import "golang.org/x/sys/unix"

// blockInput is the process's count of block input operations (reads from
// a device, not from the page cache), or -1 if unknown. timeStorage uses
// it to tell crowded reads from memory from reads that waited on a device.
func blockInput() int64 {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return -1
	}
	return int64(ru.Inblock)
}
