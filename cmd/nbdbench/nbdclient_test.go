//go:build linux

package main

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
)

// Wire vectors, written out as the NBD spec lays them out.
var (
	greeting = []byte{
		'N', 'B', 'D', 'M', 'A', 'G', 'I', 'C',
		'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T',
		0x00, 0x03, // fixed newstyle | no zeroes
	}
	// The client's answer to greeting: flags, then NBD_OPT_GO for "disk".
	goDisk = []byte{
		0x00, 0x00, 0x00, 0x03, // C_FIXED_NEWSTYLE | C_NO_ZEROES
		'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T',
		0x00, 0x00, 0x00, 0x07, // NBD_OPT_GO
		0x00, 0x00, 0x00, 0x0a, // 10 bytes of data
		0x00, 0x00, 0x00, 0x04, 'd', 'i', 's', 'k',
		0x00, 0x00, // no information requests
	}
	// NBD_REP_INFO with NBD_INFO_EXPORT: 1 GiB, HAS_FLAGS | CAN_MULTI_CONN.
	repInfoExport = []byte{
		0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9,
		0x00, 0x00, 0x00, 0x07,
		0x00, 0x00, 0x00, 0x03,
		0x00, 0x00, 0x00, 0x0c,
		0x00, 0x00,
		0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00,
		0x01, 0x01,
	}
	// NBD_REP_INFO with NBD_INFO_BLOCK_SIZE, which the client skips.
	repInfoBlockSize = []byte{
		0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9,
		0x00, 0x00, 0x00, 0x07,
		0x00, 0x00, 0x00, 0x03,
		0x00, 0x00, 0x00, 0x0e,
		0x00, 0x03,
		0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x10, 0x00, 0x02, 0x00, 0x00, 0x00,
	}
	repAckGo = []byte{
		0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9,
		0x00, 0x00, 0x00, 0x07,
		0x00, 0x00, 0x00, 0x01,
		0x00, 0x00, 0x00, 0x00,
	}
	// NBD_REP_ERR_UNKNOWN with a message.
	repErrUnknown = []byte{
		0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9,
		0x00, 0x00, 0x00, 0x07,
		0x80, 0x00, 0x00, 0x06,
		0x00, 0x00, 0x00, 0x02,
		'n', 'o',
	}
	// A reply claiming 16 MiB of data.
	repHuge = []byte{
		0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9,
		0x00, 0x00, 0x00, 0x07,
		0x00, 0x00, 0x00, 0x03,
		0x01, 0x00, 0x00, 0x00,
	}
)

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// scripted is a fake server: it reads what the client sends into got and
// answers with the script, all at once.
type scripted struct {
	r   *bytes.Reader
	got bytes.Buffer
}

func (s *scripted) Read(p []byte) (int, error)  { return s.r.Read(p) }
func (s *scripted) Write(p []byte) (int, error) { return s.got.Write(p) }

func TestHandshake(t *testing.T) {
	tests := []struct {
		name   string
		server []byte
		want   exportInfo
		err    error // errors.Is target; nil for success
		errAs  bool  // want an *optError
	}{
		{
			name:   "go with info",
			server: cat(greeting, repInfoExport, repAckGo),
			want:   exportInfo{size: 1 << 30, flags: flagHasFlags | flagCanMultiConn},
		},
		{
			name:   "other info first",
			server: cat(greeting, repInfoBlockSize, repInfoExport, repAckGo),
			want:   exportInfo{size: 1 << 30, flags: flagHasFlags | flagCanMultiConn},
		},
		{name: "ack without export info", server: cat(greeting, repAckGo), err: errNoExportInfo},
		{name: "unknown export", server: cat(greeting, repErrUnknown), errAs: true},
		{name: "huge reply", server: cat(greeting, repHuge), err: errOptReply},
		{name: "oldstyle server", server: cat([]byte("NBDMAGIC"), []byte{0, 0, 0x42, 0x02, 0x81, 0x86, 0x12, 0x53}, make([]byte, 2)), err: errNotNBD},
		{name: "not fixed newstyle", server: cat(greeting[:16], []byte{0, 0}), err: errNotNBD},
		{name: "bad reply magic", server: cat(greeting, []byte("HTTP/1.1 400 Bad Request\r\n")), err: errOptReply},
		{name: "hangs up", server: greeting, err: io.EOF},
		{name: "short greeting", server: greeting[:10], err: io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &scripted{r: bytes.NewReader(tt.server)}
			got, err := handshake(s, "disk")
			var oe *optError
			switch {
			case tt.errAs:
				if !errors.As(err, &oe) {
					t.Fatalf("handshake() error = %v, want an *optError", err)
				}
			case !errors.Is(err, tt.err):
				t.Fatalf("handshake() error = %v, want %v", err, tt.err)
			}
			if tt.err == nil && !tt.errAs && got != tt.want {
				t.Errorf("handshake() = %+v, want %+v", got, tt.want)
			}
			if len(tt.server) >= len(greeting) && bytes.Equal(tt.server[:18], greeting) && !bytes.Equal(s.got.Bytes(), goDisk) {
				t.Errorf("client sent % x, want % x", s.got.Bytes(), goDisk)
			}
		})
	}
}

func TestDisconnect(t *testing.T) {
	var b bytes.Buffer
	if err := disconnect(&b); err != nil {
		t.Fatal(err)
	}
	want := []byte{
		0x25, 0x60, 0x95, 0x13, // NBD_REQUEST_MAGIC
		0x00, 0x00, // flags
		0x00, 0x02, // NBD_CMD_DISC
		0, 0, 0, 0, 0, 0, 0, 0, // handle
		0, 0, 0, 0, 0, 0, 0, 0, // offset
		0, 0, 0, 0, // length
	}
	if !bytes.Equal(b.Bytes(), want) {
		t.Errorf("disconnect wrote % x, want % x", b.Bytes(), want)
	}
}

// TestDialExport runs the client against a scripted server on a real
// loopback socket.
func TestDialExport(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	done := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- nil
			return
		}
		defer c.Close()
		c.Write(greeting)
		got := make([]byte, len(goDisk))
		io.ReadFull(c, got)
		c.Write(cat(repInfoExport, repAckGo))
		disc := make([]byte, 28)
		io.ReadFull(c, disc)
		done <- append(got, disc...)
	}()
	info, err := probeExport(ln.Addr().String(), "disk")
	if err != nil {
		t.Fatalf("probeExport() error = %v", err)
	}
	if info.size != 1<<30 || !info.multiConn() {
		t.Errorf("probeExport() = %+v, want 1 GiB with multi-conn", info)
	}
	got := <-done
	if len(got) != len(goDisk)+28 || !bytes.Equal(got[:len(goDisk)], goDisk) || got[len(goDisk)+7] != byte(cmdDisc) {
		t.Errorf("server received % x, want NBD_OPT_GO then NBD_CMD_DISC", got)
	}
}

func FuzzHandshake(f *testing.F) {
	f.Add(cat(greeting, repInfoExport, repAckGo))
	f.Add(cat(greeting, repInfoBlockSize, repInfoExport, repAckGo))
	f.Add(cat(greeting, repErrUnknown))
	f.Add(cat(greeting, repHuge))
	f.Fuzz(func(t *testing.T, b []byte) {
		handshake(&scripted{r: bytes.NewReader(b)}, "disk") // must not panic or over-allocate
	})
}
