package nbd

import "golang.org/x/sys/unix"

// threadSleeps is the calling thread's count of voluntary context
// switches: the times it slept, waiting on a device, a lock or anything
// else, as against being preempted or stopped by a CPU quota. -1 if
// unknown. The caller keeps its goroutine on the thread (LockOSThread)
// between two counts it compares.
func threadSleeps() int64 {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_THREAD, &ru) != nil {
		return -1
	}
	return int64(ru.Nvcsw)
}
