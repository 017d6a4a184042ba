package main

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"boardnbd/config"
	"boardnbd/nbd/backend"
)

// TestExportStorageSplices checks that a connection's storage, through the
// appliance's wrappers and copy-on-write overlays, still moves reads into a
// pipe (backend.PipeReader), which the server needs to splice large read
// replies.
func TestExportStorageSplices(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	data := bytes.Repeat([]byte("boardnbd"), 32<<10) // 256 KiB
	if err := os.WriteFile(img, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := map[string]config.Export{
		"plain":                 {Name: "plain", Path: img},
		"per-connection copy":   {Name: "cow", Path: img, CopyOnWrite: config.CopyOnWriteConnection},
		"persistent copy":       {Name: "pcow", Path: img, CopyOnWrite: config.CopyOnWritePersistent, Overlay: filepath.Join(dir, "p.ov")},
		"persistent per client": {Name: "pcc", Path: img, CopyOnWrite: config.CopyOnWritePersistent, Overlay: filepath.Join(dir, "c-%s.ov")},
	}
	for name, cfg := range cases {
		t.Run(name, func(t *testing.T) {
			e, err := newServed(cfg, config.TLS{}, slog.New(slog.NewTextHandler(io.Discard, nil)), false)
			if err != nil {
				t.Fatal(err)
			}
			b, err := e.open(&net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			var fds [2]int
			if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fds[0])
			defer unix.Close(fds[1])
			n, err := backend.ReadToPipe(b, fds[1], 4096, 32<<10, false)
			if err != nil || n != 32<<10 {
				t.Fatalf("ReadToPipe = %d, %v; want all 32 KiB", n, err)
			}
			got := make([]byte, n)
			if k, err := unix.Read(fds[0], got); err != nil || k != n || !bytes.Equal(got, data[4096:4096+n]) {
				t.Fatalf("the pipe gave %d bytes (%v), equal to the image's: %v", k, err, bytes.Equal(got[:max(k, 0)], data[4096:4096+max(k, 0)]))
			}
		})
	}
}
