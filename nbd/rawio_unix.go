//go:build unix && !linux

package nbd

import "golang.org/x/sys/unix"

// rawRead is read(2); only Linux makes it a raw system call (rawio_linux.go).
func rawRead(fd uintptr, p []byte) (int, error) { return unix.Read(int(fd), p) }
