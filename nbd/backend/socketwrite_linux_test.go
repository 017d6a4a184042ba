package backend

import (
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkSocketToPageCache measures what a large write's payload costs
// the thread that takes it off a loopback TCP socket and into an image's
// page cache: received into a buffer and written with pwrite, as the
// server does; received straight into a shared mapping of the whole
// image, which leaves the kernel one copy instead of two; and received
// and written in pieces of the payload. It reports that thread's CPU
// seconds per GiB (recv-cpu-s/GiB); the sender runs on another thread and
// is not counted. The mapping and the pieces are measured ideas, not how
// the server writes: through a mapping, a page not in memory is read from
// the storage before it is written, even whole, so it pays only for cached
// images, and pieces cost more calls than the cache saves; see "Received
// into a mapping" in cmd/nbdbench/HISTORY.md.
//
//	go test -run '^$' -bench SocketToPageCache -benchtime 4096x ./nbd/backend/
func BenchmarkSocketToPageCache(b *testing.B) {
	const (
		chunk = 256 << 10 // nbdcopy's request size
		size  = 64 << 20
	)
	f := openT(b, newImage(b, memDir(b), size), Options{})
	if _, err := f.WriteAt(pattern(size, 1), 0); err != nil {
		b.Fatal(err)
	}
	fd := int(f.f.Fd())
	image, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Munmap(image)
	buf := make([]byte, chunk)

	type way struct {
		name string
		put  func(sock int, off int64) error
	}
	ways := []way{
		{"recv+pwrite", func(sock int, off int64) error {
			if err := recvAll(sock, buf); err != nil {
				return err
			}
			_, err := unix.Pwrite(fd, buf, off)
			return err
		}},
		{"recv-into-mapping", func(sock int, off int64) error {
			return recvAll(sock, image[off:off+chunk])
		}},
	}
	// Received and written a piece at a time, so that the buffer stays in
	// the processor's cache between the two copies.
	for _, piece := range []int{64 << 10, 16 << 10} {
		ways = append(ways, way{fmt.Sprintf("recv+pwrite-by-%dKiB", piece>>10), func(sock int, off int64) error {
			for done := 0; done < chunk; done += piece {
				if err := recvAll(sock, buf[:piece]); err != nil {
					return err
				}
				if _, err := unix.Pwrite(fd, buf[:piece], off+int64(done)); err != nil {
					return err
				}
			}
			return nil
		}})
	}
	for _, w := range ways {
		b.Run(w.name, func(b *testing.B) {
			sock, done := loopbackStream(b, chunk, b.N)
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			b.SetBytes(chunk)
			b.ResetTimer()
			start := threadCPU(b)
			var off int64
			for i := 0; i < b.N; i++ {
				if err := w.put(sock, off); err != nil {
					b.Fatal(err)
				}
				off = (off + chunk) % size
			}
			used := threadCPU(b) - start
			b.StopTimer()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(used.Seconds()/(float64(b.N)*chunk/(1<<30)), "recv-cpu-s/GiB")
		})
	}
}

// loopbackStream connects to a loopback listener whose other end sends
// n chunks of size bytes and then closes; it returns the receiving
// socket, blocking, and the sender's result.
func loopbackStream(b *testing.B, size, n int) (int, <-chan error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		p := pattern(size, 2)
		for range n {
			if _, err := c.Write(p); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	// A duplicate descriptor is a blocking socket of its own, outside the
	// runtime's poller, as the server's reader sleeps in recv.
	file, err := c.(*net.TCPConn).File()
	c.Close()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { file.Close() })
	sock := int(file.Fd())
	if err := unix.SetNonblock(sock, false); err != nil {
		b.Fatal(err)
	}
	return sock, done
}

// recvAll fills p from a blocking socket.
func recvAll(sock int, p []byte) error {
	for len(p) > 0 {
		n, _, err := unix.Recvfrom(sock, p, unix.MSG_WAITALL)
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		p = p[n:]
	}
	return nil
}

// threadCPU is the calling thread's user and system time.
func threadCPU(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
