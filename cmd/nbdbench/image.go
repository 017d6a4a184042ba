//go:build linux

package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"syscall"
)

const tmpfsMagic = 0x01021994 // TMPFS_MAGIC, statfs(2)

// isTmpfs reports whether path is on a tmpfs.
func isTmpfs(path string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(path, &st) == nil && st.Type == tmpfsMagic
}

// workDir makes the bench's directory in RAM: under /dev/shm when that is a
// tmpfs, else on a tmpfs mounted for the purpose (as root). The returned
// function removes it.
func workDir(want string, sizeBytes int64) (string, func(), error) {
	if want != "" {
		if !isTmpfs(want) {
			return "", nil, fmt.Errorf("-dir %s is not a tmpfs", want)
		}
		d, err := os.MkdirTemp(want, "nbdbench-")
		return d, func() { os.RemoveAll(d) }, err
	}
	if isTmpfs("/dev/shm") {
		d, err := os.MkdirTemp("/dev/shm", "nbdbench-")
		return d, func() { os.RemoveAll(d) }, err
	}
	d, err := os.MkdirTemp("", "nbdbench-")
	if err != nil {
		return "", nil, err
	}
	opts := fmt.Sprintf("size=%d,mode=0755", sizeBytes)
	if err := syscall.Mount("tmpfs", d, "tmpfs", 0, opts); err != nil {
		os.Remove(d)
		return "", nil, fmt.Errorf("/dev/shm is not a tmpfs and mounting one on %s failed (run as root, or give -dir): %w", d, err)
	}
	return d, func() {
		syscall.Unmount(d, syscall.MNT_DETACH)
		os.Remove(d)
	}, nil
}

// writeImage fills path with size bytes of data that no server or client
// can skip: no holes, no zero blocks (nbdcopy would send zeroes as
// NBD_CMD_WRITE_ZEROES, and servers reporting extents would let it skip
// reads). A 1 MiB random block repeats, each 4 KiB stamped with its offset.
func writeImage(path string, size int64, seed uint64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	block := make([]byte, 1<<20)
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 'n', 'b', 'd'})
	rng.Read(block)
	for off := int64(0); off < size; off += int64(len(block)) {
		for i := 0; i < len(block); i += 4096 {
			binary.LittleEndian.PutUint64(block[i:], uint64(off)+uint64(i)|1)
		}
		n := min(int64(len(block)), size-off)
		if _, err := w.Write(block[:n]); err != nil {
			f.Close()
			return err
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
