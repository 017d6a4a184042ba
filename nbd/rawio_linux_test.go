//go:build linux

package nbd

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// sockWriter writes more buffers than one writev takes, and more bytes than
// the socket holds, in order: it resumes after partial writes and waits for
// room while the peer is slow to read.
func TestSockWriterWritesEverything(t *testing.T) {
	client, server := tcpPair(t)
	server.(*net.TCPConn).SetWriteBuffer(64 << 10)
	var bufs [][]byte
	var want []byte
	for i := range 3*maxIOV + 7 {
		n := 1 + i%1500
		if i%997 == 0 {
			n = 256 << 10
		}
		b := bytes.Repeat([]byte{byte(i), byte(i >> 8)}, n)[:n]
		bufs = append(bufs, b)
		want = append(want, b...)
	}
	w := newSockWriter(server)
	if w == nil {
		t.Fatal("newSockWriter(TCP connection) = nil")
	}
	got := make(chan []byte, 1)
	go func() {
		time.Sleep(50 * time.Millisecond) // let the socket fill first
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(io.LimitReader(client, int64(len(want))))
		got <- b
	}()
	server.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := w.writev(bufs); err != nil {
		t.Fatalf("writev of %d buffers, %d bytes = %v", len(bufs), len(want), err)
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("peer read %d bytes, want %d, same prefix %v", len(b), len(want), bytes.HasPrefix(want, b))
	}
}

// A write to a peer that has gone is an error, not a hang.
func TestSockWriterPeerGone(t *testing.T) {
	client, server := tcpPair(t)
	client.Close()
	w := newSockWriter(server)
	server.SetWriteDeadline(time.Now().Add(10 * time.Second))
	big := [][]byte{make([]byte, 8<<20)}
	var err error
	for range 4 { // the first write may land in the socket before the reset
		if err = w.writev([][]byte{big[0]}); err != nil {
			break
		}
	}
	if err == nil {
		t.Fatal("writev to a closed peer succeeded four times")
	}
}

// A reply larger than the socket holds, to a client at depth 1 that is slow
// to read it: the writer waits on the poller, not in the kernel, and the
// whole reply arrives. It is sent while the reader's socket is out of the
// runtime's poller, which the writer puts it back into before it waits.
func TestLargeReplyToASlowClientAtDepthOne(t *testing.T) {
	const wait = 100 * time.Millisecond
	const size = 16 << 20
	lengthenHotWait(t, wait, 2)
	disk := newMem(size)
	for i := range disk.data {
		disk.data[i] = byte(i*7 + i>>12)
	}
	s := &Server{}
	addr := startServer(t, s, memExport("disk", disk))
	tc := dialFixed(t, addr)
	tc.goExport("disk", false)
	fd := serverFD(t, s)
	tc.fastStreak(0)
	tc.calmDown(t, "at depth 1")
	if inRuntimePoller(t, fd) {
		t.Fatal("the socket stayed in the runtime's epoll set while its reader sleeps in read(2)")
	}

	tc.request(0, cmdRead, 7, 0, size, nil)
	time.Sleep(5 * wait) // the socket fills while the client does not read
	tc.c.SetDeadline(time.Now().Add(5 * time.Second))
	if e, h := tc.simple(); e != 0 || h != 7 {
		t.Fatalf("large read = errno %d handle %d", e, h)
	}
	got := make([]byte, size)
	tc.read(got)
	if !bytes.Equal(got, disk.data) {
		t.Fatal("large read returned the wrong data")
	}
	tc.smallRead(8)
}
