//go:build unix && !linux

package nbd

import "golang.org/x/sys/unix"

// rawRead is read(2); only Linux makes it a raw system call (rawio_linux.go).
func rawRead(fd uintptr, p []byte) (int, error) { return unix.Read(int(fd), p) }

// rawReadNow is recv(2) with MSG_DONTWAIT: it never sleeps.
func rawReadNow(fd uintptr, p []byte) (int, error) {
	n, _, err := unix.Recvfrom(int(fd), p, unix.MSG_DONTWAIT)
	return n, err
}
