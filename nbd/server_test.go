package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"boardnbd/nbd/backend"
)

const testSize = 1 << 20

// twoExports serves a writable "disk" and a read-only "ro".
func twoExports(t testing.TB) (string, *memBackend, *memBackend) {
	disk, ro := newMem(testSize), newMem(64<<10)
	roExp := memExport("ro", ro)
	roExp.ReadOnly = true
	addr := startServer(t, &Server{}, memExport("disk", disk), roExp)
	return addr, disk, ro
}

func TestPlainNewstyleClient(t *testing.T) {
	// A client that does not know fixed newstyle: flags 0, EXPORT_NAME,
	// and the 124 zero bytes it expects (busybox nbd-client does this).
	addr, _, _ := twoExports(t)
	tc := dial(t, addr)
	tc.u32(0)
	tc.opt(optExportName, []byte("disk"))
	var p [8 + 2 + 124]byte
	tc.read(p[:])
	if size := binary.BigEndian.Uint64(p[:]); size != testSize {
		t.Errorf("EXPORT_NAME size = %d, want %d", size, testSize)
	}
	if f := binary.BigEndian.Uint16(p[8:]); f&flagHasFlags == 0 || f&flagReadOnly != 0 {
		t.Errorf("EXPORT_NAME flags = %#x, want HAS_FLAGS and not READ_ONLY", f)
	}
	if !bytes.Equal(p[10:], make([]byte, 124)) {
		t.Errorf("reserved bytes are not zero: %x", p[10:])
	}
	// Transmission works: write then read back, simple replies.
	tc.request(0, cmdWrite, 1, 512, 4, []byte("abcd"))
	if e, h := tc.simple(); e != 0 || h != 1 {
		t.Fatalf("WRITE reply = %d, handle %d", e, h)
	}
	tc.request(0, cmdRead, 2, 512, 4, nil)
	if e, h := tc.simple(); e != 0 || h != 2 {
		t.Fatalf("READ reply = %d, handle %d", e, h)
	}
	var got [4]byte
	tc.read(got[:])
	if string(got[:]) != "abcd" {
		t.Errorf("READ(off=512) = %q, want %q", got, "abcd")
	}
	tc.request(0, cmdDisc, 3, 0, 0, nil)
	tc.closed()
}

func TestExportNameNoZeroes(t *testing.T) {
	addr, _, _ := twoExports(t)
	tc := dialFixed(t, addr)
	tc.opt(optExportName, []byte("ro"))
	var p [10]byte
	tc.read(p[:])
	if f := binary.BigEndian.Uint16(p[8:]); f&flagReadOnly == 0 {
		t.Errorf("flags of ro = %#x, want READ_ONLY", f)
	}
	// With NO_ZEROES the next bytes are a reply, not padding.
	tc.request(0, cmdRead, 9, 0, 0, nil)
	if e, h := tc.simple(); e != 0 || h != 9 {
		t.Fatalf("READ reply = %d, handle %d", e, h)
	}
}

func TestHandshakeViolationsClose(t *testing.T) {
	addr, _, _ := twoExports(t)
	tests := []struct {
		name string
		send func(tc *tclient)
	}{
		{"unknown client flags", func(tc *tclient) { tc.u32(1 << 5) }},
		{"bad option magic", func(tc *tclient) {
			tc.u32(flagCFixedNewstyle)
			tc.write(make([]byte, 16))
		}},
		{"option data over 64 KiB", func(tc *tclient) {
			tc.u32(flagCFixedNewstyle)
			b := binary.BigEndian.AppendUint64(nil, magicOpt)
			b = binary.BigEndian.AppendUint32(b, optGo)
			b = binary.BigEndian.AppendUint32(b, 1<<31)
			tc.write(b)
		}},
		{"EXPORT_NAME of unknown export", func(tc *tclient) {
			tc.u32(flagCFixedNewstyle)
			tc.opt(optExportName, []byte("nope"))
		}},
		{"ABORT", func(tc *tclient) {
			tc.u32(flagCFixedNewstyle)
			tc.opt(optAbort, nil)
			if r := tc.reply(); r.typ != repAck {
				tc.t.Errorf("ABORT reply = %#x, want ACK", r.typ)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tc := dial(t, addr)
			tt.send(tc)
			tc.closed()
			// The server serves others on.
			other := dialFixed(t, addr)
			if size, _ := other.goExport("disk", false); size != testSize {
				t.Errorf("after %s: GO size = %d", tt.name, size)
			}
		})
	}
}

func TestOptionReplies(t *testing.T) {
	addr, _, _ := twoExports(t)
	tests := []struct {
		name string
		opt  uint32
		data []byte
		want uint32 // final reply type
	}{
		{"unknown option", 77, []byte("xyz"), repErrUnsup},
		{"LIST with data", optList, []byte{1}, repErrInvalid},
		{"STARTTLS without TLS", optStartTLS, nil, repErrPolicy},
		{"STARTTLS with data", optStartTLS, []byte{1}, repErrInvalid},
		{"INFO unknown export", optInfo, exportReq("nope"), repErrUnknown},
		{"GO unknown export", optGo, exportReq("nope"), repErrUnknown},
		{"INFO truncated", optInfo, []byte{0, 0, 0, 9, 'a'}, repErrInvalid},
		{"INFO name longer than data", optInfo, []byte{0, 0, 0, 200, 0, 0}, repErrInvalid},
		{"INFO trailing bytes", optInfo, append(exportReq("disk"), 0), repErrInvalid},
		{"STRUCTURED_REPLY with data", optStructuredReply, []byte{1}, repErrInvalid},
		{"SET_META_CONTEXT before structured", optSetMetaContext, metaReq("disk", "base:allocation"), repErrInvalid},
		{"LIST_META_CONTEXT before structured", optListMetaContext, metaReq("disk"), repErrInvalid},
		{"INFO default export with two exports", optInfo, exportReq(""), repErrUnknown},
	}
	// All on one connection: every error leaves the handshake usable.
	tc := dialFixed(t, addr)
	for _, tt := range tests {
		tc.opt(tt.opt, tt.data)
		rs := tc.replies(tt.opt)
		if got := rs[len(rs)-1].typ; got != tt.want {
			t.Errorf("%s: reply = %#x (%s), want %#x", tt.name, got, rs[len(rs)-1].data, tt.want)
		}
	}
	if size, _ := tc.goExport("disk", false); size != testSize {
		t.Errorf("GO after errors: size = %d", size)
	}
}

func TestList(t *testing.T) {
	addr, _, _ := twoExports(t)
	tc := dialFixed(t, addr)
	tc.opt(optList, nil)
	rs := tc.replies(optList)
	var names []string
	for _, r := range rs[:len(rs)-1] {
		if r.typ != repServer {
			t.Fatalf("LIST reply type = %#x", r.typ)
		}
		n := binary.BigEndian.Uint32(r.data)
		names = append(names, string(r.data[4:4+n]))
		if desc := string(r.data[4+n:]); desc != "test export "+names[len(names)-1] {
			t.Errorf("LIST description = %q", desc)
		}
	}
	if len(names) != 2 || names[0] != "disk" || names[1] != "ro" {
		t.Errorf("LIST = %q, want [disk ro]", names)
	}
}

func TestInfoThenGoAgree(t *testing.T) {
	addr, _, _ := twoExports(t)
	for _, structured := range []bool{false, true} {
		tc := dialFixed(t, addr)
		if structured {
			tc.opt(optStructuredReply, nil)
			tc.replies(optStructuredReply)
		}
		req := exportReq("disk", infoName, infoDescription, infoBlockSize)
		tc.opt(optInfo, req)
		info := tc.replies(optInfo)
		tc.opt(optGo, req)
		gox := tc.replies(optGo)
		if len(info) != len(gox) {
			t.Fatalf("INFO gave %d replies, GO %d", len(info), len(gox))
		}
		for i := range info {
			if info[i].typ != gox[i].typ || !bytes.Equal(info[i].data, gox[i].data) {
				t.Errorf("structured=%v reply %d: INFO %x, GO %x", structured, i, info[i].data, gox[i].data)
			}
		}
		var sawBlock bool
		for _, r := range gox {
			if r.typ == repInfo && binary.BigEndian.Uint16(r.data) == infoBlockSize {
				sawBlock = true
				minB, prefB, maxB := binary.BigEndian.Uint32(r.data[2:]), binary.BigEndian.Uint32(r.data[6:]), binary.BigEndian.Uint32(r.data[10:])
				if minB != 1 || prefB != 4096 || maxB != DefaultMaxPayload {
					t.Errorf("block sizes = %d/%d/%d, want 1/4096/%d", minB, prefB, maxB, DefaultMaxPayload)
				}
			}
			if r.typ == repInfo && binary.BigEndian.Uint16(r.data) == infoExport {
				f := binary.BigEndian.Uint16(r.data[10:])
				if got := f&flagSendDF != 0; got != structured {
					t.Errorf("SEND_DF = %v with structured=%v", got, structured)
				}
				want := flagHasFlags | flagSendFlush | flagSendFUA | flagSendTrim | flagSendWriteZeroes |
					flagSendFastZero | flagCanMultiConn | flagSendCache
				if f&want != want {
					t.Errorf("flags = %#x, want at least %#x", f, want)
				}
			}
		}
		if !sawBlock {
			t.Errorf("no NBD_INFO_BLOCK_SIZE reply")
		}
	}
}

func TestMetaContext(t *testing.T) {
	addr, _, _ := twoExports(t)
	tc := dialFixed(t, addr)
	tc.opt(optStructuredReply, nil)
	tc.replies(optStructuredReply)
	tests := []struct {
		opt     uint32
		data    []byte
		want    []string
		wantErr uint32
	}{
		{optListMetaContext, metaReq("disk"), []string{"base:allocation"}, 0},
		{optListMetaContext, metaReq("disk", "base:"), []string{"base:allocation"}, 0},
		{optListMetaContext, metaReq("disk", "qemu:dirty-bitmap:x"), nil, 0},
		{optListMetaContext, metaReq("disk", "nocolon"), nil, repErrInvalid},
		{optListMetaContext, metaReq("nope"), nil, repErrUnknown},
		{optSetMetaContext, metaReq("disk"), nil, 0},
		{optSetMetaContext, metaReq("disk", "base:"), nil, 0},
		{optSetMetaContext, metaReq("disk", "x-foo:bar", "base:allocation"), []string{"base:allocation"}, 0},
		{optSetMetaContext, []byte{0, 0, 0, 4, 'd', 'i', 's', 'k', 0xff, 0xff, 0xff, 0xff}, nil, repErrInvalid},
	}
	for i, tt := range tests {
		tc.opt(tt.opt, tt.data)
		rs := tc.replies(tt.opt)
		last := rs[len(rs)-1]
		if tt.wantErr != 0 {
			if last.typ != tt.wantErr {
				t.Errorf("case %d: final reply = %#x, want %#x", i, last.typ, tt.wantErr)
			}
			continue
		}
		var got []string
		for _, r := range rs[:len(rs)-1] {
			got = append(got, string(r.data[4:]))
			id := binary.BigEndian.Uint32(r.data)
			if (tt.opt == optListMetaContext) != (id == 0) {
				t.Errorf("case %d: context id %d", i, id)
			}
		}
		if last.typ != repAck || len(got) != len(tt.want) || (len(got) > 0 && got[0] != tt.want[0]) {
			t.Errorf("case %d: contexts = %q (final %#x), want %q", i, got, last.typ, tt.want)
		}
	}
}

// transmissionErrors is the spec's table of request errors.
func TestTransmissionErrors(t *testing.T) {
	addr, disk, _ := twoExports(t)
	disk.with(func() { disk.failAt, disk.failErr = 8192, errInjected })
	tests := []struct {
		name    string
		export  string
		flags   uint16
		typ     uint16
		off     uint64
		length  uint32
		payload bool
		want    uint32
	}{
		{"write past the end", "disk", 0, cmdWrite, testSize - 2, 4, true, errNoSpc},
		{"write zeroes past the end", "disk", 0, cmdWriteZeroes, testSize, 1, false, errNoSpc},
		{"read past the end", "disk", 0, cmdRead, testSize - 2, 4, false, errInval},
		{"read offset overflow", "disk", 0, cmdRead, 1<<64 - 2, 4, false, errInval},
		{"trim past the end", "disk", 0, cmdTrim, testSize, 512, false, errInval},
		{"cache past the end", "disk", 0, cmdCache, testSize, 512, false, errInval},
		{"write to read-only", "ro", 0, cmdWrite, 0, 4, true, errPerm},
		{"trim on read-only", "ro", 0, cmdTrim, 0, 4, false, errPerm},
		{"write zeroes on read-only", "ro", 0, cmdWriteZeroes, 0, 4, false, errPerm},
		{"write past the end of read-only", "ro", 0, cmdWrite, 1 << 30, 4, true, errPerm},
		{"unknown command", "disk", 0, 99, 0, 0, false, errInval},
		{"unknown flag", "disk", 1 << 9, cmdRead, 0, 4, false, errInval},
		{"DF without structured replies", "disk", cmdFlagDF, cmdRead, 0, 4, false, errInval},
		{"NO_HOLE on write", "disk", cmdFlagNoHole, cmdWrite, 0, 4, true, errInval},
		{"REQ_ONE on read", "disk", cmdFlagReqOne, cmdRead, 0, 4, false, errInval},
		{"block status without meta context", "disk", 0, cmdBlockStatus, 0, 4096, false, errInval},
		{"read over the maximum", "disk", 0, cmdRead, 0, DefaultMaxPayload + 1, false, errInval},
		{"backend read failure", "disk", 0, cmdRead, 8192, 512, false, errIO},
		{"backend write failure", "disk", 0, cmdWrite, 8190, 4, true, errIO},
		{"backend zero failure", "disk", 0, cmdWriteZeroes, 8192, 4, false, errIO},
		{"FUA on read is fine", "disk", cmdFlagFUA, cmdRead, 0, 0, false, 0},
		{"zero-length write", "disk", 0, cmdWrite, testSize, 0, false, 0},
	}
	conns := map[string]*tclient{}
	for _, name := range []string{"disk", "ro"} {
		tc := dialFixed(t, addr)
		tc.goExport(name, false)
		conns[name] = tc
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tc := conns[tt.export]
			tc.t = t
			var payload []byte
			if tt.payload {
				payload = make([]byte, tt.length)
			}
			h := uint64(1000 + i)
			tc.request(tt.flags, tt.typ, h, tt.off, tt.length, payload)
			errno, handle := tc.simple()
			if errno != tt.want || handle != h {
				t.Fatalf("reply = errno %d handle %d, want errno %d handle %d", errno, handle, tt.want, h)
			}
			if tt.typ == cmdRead && errno == 0 {
				tc.read(make([]byte, tt.length))
			}
			// The connection is still usable.
			tc.request(0, cmdRead, 7, 0, 512, nil)
			if e, _ := tc.simple(); e != 0 {
				t.Fatalf("READ after the error = %d", e)
			}
			tc.read(make([]byte, 512))
		})
	}
}

func TestStructuredErrorsCarryMessages(t *testing.T) {
	addr, _, _ := twoExports(t)
	tc := dialFixed(t, addr)
	tc.goExport("ro", true)
	tc.request(0, cmdRead, 5, 1<<20, 512, nil) // past the end of ro
	cks := tc.chunks()
	if len(cks) != 1 || cks[0].typ != replyTypeError || cks[0].handle != 5 {
		t.Fatalf("chunks = %+v, want one error chunk", cks)
	}
	p := cks[0].payload
	if e := binary.BigEndian.Uint32(p); e != errInval {
		t.Errorf("error = %d, want EINVAL", e)
	}
	if n := binary.BigEndian.Uint16(p[4:]); int(n) != len(p)-6 || n == 0 {
		t.Errorf("message length %d of payload %d", n, len(p))
	}
}

func TestViolationsCloseOnlyThatConnection(t *testing.T) {
	addr, disk, _ := twoExports(t)
	tests := []struct {
		name string
		send func(tc *tclient)
	}{
		{"bad request magic", func(tc *tclient) { tc.write(make([]byte, requestLen)) }},
		{"write payload over the maximum", func(tc *tclient) {
			// Only the header: the server must not wait for, or
			// allocate, 4 GiB.
			tc.request(0, cmdWrite, 1, 0, 1<<32-1, nil)
		}},
	}
	other := dialFixed(t, addr)
	other.goExport("disk", false)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tc := dialFixed(t, addr)
			tc.goExport("disk", false)
			tt.send(tc)
			tc.closed()
			other.t = t
			other.request(0, cmdWrite, 2, 0, 3, []byte("yes"))
			if e, _ := other.simple(); e != 0 {
				t.Fatalf("other connection WRITE = %d", e)
			}
		})
	}
	if got := disk.bytesAt(0, 3); string(got) != "yes" {
		t.Errorf("data = %q", got)
	}
}

func TestStructuredReadWithHoles(t *testing.T) {
	addr, disk, _ := twoExports(t)
	disk.with(func() {
		copy(disk.data[4096:], bytes.Repeat([]byte{7}, 4096))
		disk.written[1] = true
	})
	tc := dialFixed(t, addr)
	tc.goExport("disk", true)

	const n = minHoleRead // [0,4K) hole, [4K,8K) data, the rest hole
	tc.request(0, cmdRead, 1, 0, n, nil)
	got := make([]byte, n)
	var holes, datas int
	var holeBytes uint32
	for _, ck := range tc.chunks() {
		switch ck.typ {
		case replyTypeOffsetData:
			off := binary.BigEndian.Uint64(ck.payload)
			copy(got[off:], ck.payload[8:])
			datas++
		case replyTypeOffsetHole:
			holes++
			holeBytes += binary.BigEndian.Uint32(ck.payload[8:])
		default:
			t.Fatalf("chunk type %d", ck.typ)
		}
	}
	if holes != 2 || datas != 1 || holeBytes != n-4096 {
		t.Errorf("READ gave %d hole chunks of %d bytes and %d data chunks, want 2 of %d and 1", holes, holeBytes, datas, n-4096)
	}
	if !bytes.Equal(got, disk.bytesAt(0, n)) {
		t.Errorf("READ data differs from the export")
	}

	// A small read is not worth finding holes in: one data chunk.
	tc.request(0, cmdRead, 3, 0, 3*4096, nil)
	if cks := tc.chunks(); len(cks) != 1 || cks[0].typ != replyTypeOffsetData {
		t.Errorf("small READ gave %d chunks (first of type %d), want one data chunk", len(cks), cks[0].typ)
	}

	// With DF: one data chunk, zeroes included.
	tc.request(cmdFlagDF, cmdRead, 2, 0, 3*4096, nil)
	cks := tc.chunks()
	if len(cks) != 1 || cks[0].typ != replyTypeOffsetData || len(cks[0].payload) != 8+3*4096 {
		t.Fatalf("DF READ chunks = %d (type %d)", len(cks), cks[0].typ)
	}
}

func TestBlockStatus(t *testing.T) {
	addr, disk, _ := twoExports(t)
	disk.with(func() { disk.written[1] = true })
	tc := dialFixed(t, addr)
	tc.goExport("disk", true)
	type ext struct{ n, fl uint32 }
	decode := func(p []byte) (id uint32, es []ext) {
		id = binary.BigEndian.Uint32(p)
		for p = p[4:]; len(p) >= 8; p = p[8:] {
			es = append(es, ext{binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])})
		}
		return id, es
	}
	tc.request(0, cmdBlockStatus, 1, 0, 4*4096, nil)
	cks := tc.chunks()
	if len(cks) != 1 || cks[0].typ != replyTypeBlockStatus {
		t.Fatalf("BLOCK_STATUS chunks = %+v", cks)
	}
	id, es := decode(cks[0].payload)
	want := []ext{{4096, 3}, {4096, 0}, {8192, 3}}
	if id != metaContextBaseID || len(es) != 3 || es[0] != want[0] || es[1] != want[1] || es[2] != want[2] {
		t.Errorf("BLOCK_STATUS = id %d %v, want %v", id, es, want)
	}
	tc.request(cmdFlagReqOne, cmdBlockStatus, 2, 0, 100, nil)
	if _, es := decode(tc.chunks()[0].payload); len(es) != 1 || es[0] != (ext{100, 3}) {
		t.Errorf("BLOCK_STATUS REQ_ONE = %v, want [{100 3}]", es)
	}
	tc.request(0, cmdBlockStatus, 3, testSize-512, 1024, nil)
	if ck := tc.chunks()[0]; ck.typ != replyTypeError || binary.BigEndian.Uint32(ck.payload) != errInval {
		t.Errorf("BLOCK_STATUS past the end = type %d", ck.typ)
	}
}

func TestWriteZeroesTrimFlushFUA(t *testing.T) {
	addr, disk, _ := twoExports(t)
	tc := dialFixed(t, addr)
	tc.goExport("disk", false)
	tc.request(cmdFlagFUA, cmdWrite, 1, 0, 8192, bytes.Repeat([]byte{1}, 8192))
	if e, _ := tc.simple(); e != 0 || disk.flushCount() != 1 {
		t.Fatalf("FUA WRITE = %d, flushes %d, want 0 and 1", e, disk.flushCount())
	}
	tc.request(cmdFlagNoHole, cmdWriteZeroes, 2, 0, 4096, nil)
	if e, _ := tc.simple(); e != 0 || disk.bytesAt(0, 1)[0] != 0 || !disk.allocated(0) {
		t.Fatalf("WRITE_ZEROES NO_HOLE = %d, data %d, allocated %v", e, disk.bytesAt(0, 1)[0], disk.allocated(0))
	}
	tc.request(0, cmdTrim, 3, 4096, 4096, nil)
	if e, _ := tc.simple(); e != 0 || disk.allocated(1) {
		t.Fatalf("TRIM = %d, still allocated %v", e, disk.allocated(1))
	}
	tc.request(0, cmdFlush, 4, 0, 0, nil)
	if e, _ := tc.simple(); e != 0 || disk.flushCount() != 2 {
		t.Fatalf("FLUSH = %d, flushes %d", e, disk.flushCount())
	}
	disk.with(func() { disk.info.CanFastZero = false })
	tc.request(cmdFlagFastZero, cmdWriteZeroes, 5, 0, 4096, nil)
	if e, _ := tc.simple(); e != errNotSup {
		t.Fatalf("FAST_ZERO on a slow backend = %d, want ENOTSUP", e)
	}
	tc.request(0, cmdCache, 6, 0, 4096, nil)
	if e, _ := tc.simple(); e != 0 {
		t.Fatalf("CACHE = %d", e)
	}
}

func TestBlockSizeEnforcedWhenNegotiated(t *testing.T) {
	m := newMem(testSize)
	m.info.MinBlock = 4096
	addr := startServer(t, &Server{}, memExport("d", m))
	strict := dialFixed(t, addr)
	strict.goExport("d", false, infoBlockSize)
	strict.request(0, cmdRead, 1, 512, 512, nil)
	if e, _ := strict.simple(); e != errInval {
		t.Errorf("unaligned READ after INFO_BLOCK_SIZE = %d, want EINVAL", e)
	}
	lax := dialFixed(t, addr)
	lax.goExport("d", false)
	lax.request(0, cmdRead, 1, 512, 512, nil)
	if e, _ := lax.simple(); e != 0 {
		t.Errorf("unaligned READ without block size negotiation = %d, want 0", e)
	}
}

// TestPipelinedOutOfOrder sends many requests before reading any reply; a
// slow backend for one offset makes replies come back out of order.
func TestPipelinedOutOfOrder(t *testing.T) {
	disk := newMem(testSize)
	slow := &slowBackend{memBackend: disk, slowAt: 0, release: make(chan struct{})}
	addr := startServer(t, &Server{MaxInFlight: 8}, &Export{
		Name: "disk",
		Open: func(net.Addr) (backend.Backend, error) { return slow, nil },
	})
	tc := dialFixed(t, addr)
	tc.goExport("disk", false)
	tc.request(0, cmdRead, 0, 0, 512, nil) // blocks in the backend
	const n = 100
	for i := 1; i <= n; i++ {
		tc.request(0, cmdWrite, uint64(i), uint64(i)*512, 512, bytes.Repeat([]byte{byte(i)}, 512))
	}
	for i := 1; i <= n; i++ {
		if e, h := tc.simple(); e != 0 || h == 0 {
			t.Fatalf("reply %d = errno %d handle %d before the slow read finished", i, e, h)
		}
	}
	close(slow.release)
	if e, h := tc.simple(); e != 0 || h != 0 {
		t.Fatalf("slow READ reply = %d, %d", e, h)
	}
	tc.read(make([]byte, 512))
}

// TestInlineOnlyAfterFastStreak checks when the reader runs a request itself:
// after a streak of storage calls served from memory, so a request sent
// meanwhile waits; and not once slow calls have ended the streak, so
// requests pass a slow one again.
func TestInlineOnlyAfterFastStreak(t *testing.T) {
	gb := &gateBackend{memBackend: newMem(testSize), entered: make(chan struct{}, 1), gate: make(chan struct{})}
	addr := startServer(t, &Server{MaxInFlight: 16}, &Export{
		Name: "disk",
		Open: func(net.Addr) (backend.Backend, error) { return gb, nil },
	})
	t.Cleanup(func() { close(gb.gate) }) // before the server's: a failure must not leave a read blocked
	tc := dialFixed(t, addr)
	tc.goExport("disk", false)
	buf := make([]byte, 512)
	tc.fastStreak(4096)

	tc.request(0, cmdRead, 2, 0, 512, nil) // slow, on the reader
	<-gb.entered
	tc.request(0, cmdWrite, 3, 8192, 512, bytes.Repeat([]byte{3}, 512))
	time.Sleep(50 * time.Millisecond)
	if n := gb.writes.Load(); n != 0 {
		t.Fatalf("%d write(s) ran while a read after a fast streak was in the backend; want it run by the reader, holding the write back", n)
	}
	gb.gate <- struct{}{}
	if e, h := tc.simple(); e != 0 || h != 2 {
		t.Fatalf("slow read = errno %d handle %d", e, h)
	}
	tc.read(buf)
	if e, h := tc.simple(); e != 0 || h != 3 {
		t.Fatalf("write after the slow read = errno %d handle %d", e, h)
	}

	tc.request(0, cmdRead, 4, 0, 512, nil) // a second slow call ends the streak
	<-gb.entered
	time.Sleep(time.Millisecond)
	gb.gate <- struct{}{}
	if e, h := tc.simple(); e != 0 || h != 4 {
		t.Fatalf("second slow read = errno %d handle %d", e, h)
	}
	tc.read(buf)

	tc.request(0, cmdRead, 5, 0, 512, nil) // slow again, now on a worker
	<-gb.entered
	for i := uint64(6); i < 16; i++ {
		tc.request(0, cmdWrite, i, i*512, 512, bytes.Repeat([]byte{byte(i)}, 512))
	}
	for range 10 {
		if e, h := tc.simple(); e != 0 || h < 6 {
			t.Fatalf("write after slow requests = errno %d handle %d; want writes to pass the slow read", e, h)
		}
	}
	gb.gate <- struct{}{}
	if e, h := tc.simple(); e != 0 || h != 5 {
		t.Fatalf("third slow read = errno %d handle %d", e, h)
	}
	tc.read(buf)
}

// TestHeldRepliesNeverStall pipelines a burst of requests at a reader that
// runs them inline and holds their replies, with too few slots or too little
// payload budget for the burst. Either must make it send what it holds
// rather than wait for a slot or memory that those replies hold.
func TestHeldRepliesNeverStall(t *testing.T) {
	for _, tt := range []struct {
		name  string
		srv   *Server
		write uint32 // 0: reads only
	}{
		{"few slots", &Server{MaxInFlight: 4}, 4096},
		{"small budget", &Server{MaxInFlight: 64, MaxPayload: 16 << 10}, 0},
		{"large writes", &Server{}, 2 * readBufferSize},
	} {
		t.Run(tt.name, func(t *testing.T) {
			disk := newMem(testSize)
			pattern := bytes.Repeat([]byte("held"), 1024)
			disk.with(func() { copy(disk.data, pattern) })
			tc := dialFixed(t, startServer(t, tt.srv, memExport("disk", disk)))
			tc.goExport("disk", false)
			buf := make([]byte, 4096)
			tc.fastStreak(0)
			// One burst: reads have odd handles, writes (if any) even ones.
			const n = 200
			var burst []byte
			payload := bytes.Repeat([]byte{7}, int(tt.write))
			for i := range uint64(n) {
				var h [requestLen]byte
				if i%2 == 1 || tt.write == 0 {
					encodeRequest(&h, request{typ: cmdRead, handle: i, length: 4096})
					burst = append(burst, h[:]...)
				} else {
					encodeRequest(&h, request{typ: cmdWrite, handle: i, offset: 65536, length: tt.write})
					burst = append(append(burst, h[:]...), payload...)
				}
			}
			sent := make(chan error, 1)
			go func() { _, err := tc.c.Write(burst); sent <- err }()
			seen := map[uint64]bool{}
			for range n {
				e, h := tc.simple()
				if e != 0 || seen[h] || h >= n {
					t.Fatalf("reply errno %d handle %d (seen before: %v)", e, h, seen[h])
				}
				seen[h] = true
				if h%2 == 1 || tt.write == 0 {
					tc.read(buf)
					if !bytes.Equal(buf, pattern) {
						t.Fatalf("read %d returned the wrong data", h)
					}
				}
			}
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestHeldReplySentBeforeWaitingForPayload: a reply the reader holds goes
// out before the reader waits for the rest of a write's payload.
func TestHeldReplySentBeforeWaitingForPayload(t *testing.T) {
	disk := newMem(testSize)
	tc := dialFixed(t, startServer(t, &Server{}, memExport("disk", disk)))
	tc.goExport("disk", false)
	buf := make([]byte, 4096)
	tc.fastStreak(0)
	var rd, wr [requestLen]byte
	encodeRequest(&rd, request{typ: cmdRead, handle: 2, length: 4096})
	encodeRequest(&wr, request{typ: cmdWrite, handle: 3, offset: 8192, length: 64 << 10})
	tc.write(append(append(rd[:], wr[:]...), make([]byte, 1000)...)) // the write's payload is cut short
	tc.c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if e, h := tc.simple(); e != 0 || h != 2 {
		t.Fatalf("read reply = errno %d handle %d", e, h)
	}
	tc.read(buf)
	tc.c.SetDeadline(time.Now().Add(10 * time.Second))
	tc.write(make([]byte, 64<<10-1000))
	if e, h := tc.simple(); e != 0 || h != 3 {
		t.Fatalf("write reply = errno %d handle %d", e, h)
	}
}

// TestDeviceLatencyKeepsRequestsParallel: storage that answers in about
// 100 µs, like an SSD rather than the page cache, gains from requests
// running side by side, so they must stay on workers.
//
// The fake device waits without reading from a device, which the rule for
// crowded reads (see timeStorage) would take for the page cache; with more
// processors than requests in flight, no read here is crowded.
func TestDeviceLatencyKeepsRequestsParallel(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(64))
	lb := &latencyBackend{memBackend: newMem(testSize), delay: 100 * time.Microsecond}
	addr := startServer(t, &Server{}, &Export{
		Name: "disk",
		Open: func(net.Addr) (backend.Backend, error) { return lb, nil },
	})
	tc := dialFixed(t, addr)
	tc.goExport("disk", false)
	tc.depthOneReads(0, 4*inlineStreak) // would make a streak, were they fast
	tc.readBurst(64)
	if m := lb.most.Load(); m < 2 {
		t.Errorf("at most %d read ran at once; want reads of 100 µs storage to run in parallel", m)
	}
}

// TestCrowdedReadsFromMemoryGoInline: on one processor, reads that each
// take a little CPU and read nothing from a device, run side by side on
// workers, take several times their own time each. They must still count
// as served from memory, so the connection leaves worker mode.
func TestCrowdedReadsFromMemoryGoInline(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	cb := &cpuBackend{memBackend: newMem(testSize)}
	cb.calibrate(10 * time.Microsecond)
	addr := startServer(t, &Server{}, &Export{
		Name: "disk",
		Open: func(net.Addr) (backend.Backend, error) { return cb, nil },
	})
	tc := dialFixed(t, addr)
	tc.goExport("disk", false)
	// Under load an inline read now and then takes long enough to be
	// judged slow, and a burst or two run on workers again; what must not
	// happen is staying there. So after 8 bursts the reads must be back to
	// one at a time within 24 in all.
	var most []int32
	for len(most) < 24 {
		cb.most.Store(0)
		tc.readBurst(16)
		most = append(most, cb.most.Load())
		if len(most) >= 8 && most[len(most)-1] == 1 {
			break
		}
	}
	if last := most[len(most)-1]; last != 1 {
		t.Errorf("reads running at once in each burst: %v; want the bursts back to one at a time, inline", most)
	}
}

// TestStoppedLargeCallsCountAsFast: a large storage call that takes long
// without its thread sleeping (here a busy loop; in life a CPU quota or
// another process stopping the thread, or a slow core copying) was served
// from memory; one that sleeps, as on a device, was not; a small call is
// judged by its time alone.
func TestStoppedLargeCallsCountAsFast(t *testing.T) {
	if threadSleeps() < 0 {
		t.Skip("this system does not count a thread's sleeps")
	}
	// A collection stops every goroutine, and a goroutine kept on its
	// thread then waits asleep: a stopped call judged slow, rightly so
	// by the rule, but not what is tested here.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	busy := func() {
		for start := time.Now(); time.Since(start) < 2*time.Millisecond; {
		}
	}
	c := &conn{procs: 64}
	// judge also says whether the thread slept in the call: on a loaded
	// machine a thread about to sleep 2 ms can be stopped for longer
	// first, and then finds its wake-up already posted and never sleeps.
	judge := func(n int, wait func()) (fast, slept bool) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		before := threadSleeps()
		c.fast.Store(streakMax)
		call := c.beginStorage(true, n)
		wait()
		c.timeStorage(&call, n)
		return c.fast.Load() == streakMax, threadSleeps() != before
	}
	slow := 0
	for range 8 {
		if fast, _ := judge(sleepCheckMin, busy); !fast {
			slow++
		}
	}
	if slow > 1 {
		t.Errorf("%d of 8 large calls kept busy for 2 ms judged slow; want them served from memory", slow)
	}
	sleepers := 0
	for try := 0; sleepers < 4; try++ {
		if try == 20 {
			t.Fatalf("20 calls that were to sleep 2 ms: %d slept", sleepers)
		}
		fast, slept := judge(sleepCheckMin, func() { time.Sleep(2 * time.Millisecond) })
		if !slept {
			continue
		}
		sleepers++
		if fast {
			t.Fatal("a large call that slept 2 ms judged served from memory; want it slow")
		}
	}
	if fast, _ := judge(sleepCheckMin-1, busy); fast {
		t.Error("a call under sleepCheckMin kept busy for 2 ms judged served from memory; want it judged by its time, slow")
	}
}

// panicBackend's reads and writes panic, as a storage bug would.
type panicBackend struct{ *memBackend }

func (panicBackend) ReadAt([]byte, int64) (int, error)  { panic("test: storage bug") }
func (panicBackend) WriteAt([]byte, int64) (int, error) { panic("test: storage bug") }

// A read or write whose storage panics closes its connection, and stops
// counting as a storage call in progress: the process-wide count judges
// every later connection's reads, and one left counted for good made them
// look crowded, and run on workers, on a two-core machine after two such
// panics.
func TestStoragePanicEndsItsCount(t *testing.T) {
	start := storageBusy.Load()
	s := &Server{}
	addr := startServer(t, s, &Export{
		Name: "disk",
		Open: func(net.Addr) (backend.Backend, error) { return panicBackend{newMem(testSize)}, nil },
	})
	for _, tt := range []struct {
		typ uint16
		n   uint32
	}{{cmdRead, 512}, {cmdRead, sleepCheckMin}, {cmdWrite, 512}, {cmdWrite, sleepCheckMin}} {
		tc := dialFixed(t, addr)
		tc.goExport("disk", false)
		var payload []byte
		if tt.typ == cmdWrite {
			payload = make([]byte, tt.n)
		}
		tc.request(0, tt.typ, 1, 0, tt.n, payload)
		tc.closed()
		waitServedNone(t, s, fmt.Sprintf("type %d, %d bytes", tt.typ, tt.n))
		if got := storageBusy.Load(); got != start {
			t.Fatalf("type %d, %d bytes: %d storage calls in progress after the panic, want %d as before",
				tt.typ, tt.n, got, start)
		}
	}
}

// TestLargeSleepingReadsGoParallel: large reads whose thread sleeps, as
// on a device, are slow, and run side by side on workers.
func TestLargeSleepingReadsGoParallel(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	bb := &largeBackend{memBackend: newMem(testSize), delay: 2 * time.Millisecond}
	addr := startServer(t, &Server{}, &Export{
		Name: "disk",
		Open: func(net.Addr) (backend.Backend, error) { return bb, nil },
	})
	tc := dialFixed(t, addr)
	tc.goExport("disk", false)
	tc.fastStreak(0)
	for range 4 {
		tc.readBurstOf(8, sleepCheckMin)
	}
	if m := bb.most.Load(); m < 2 {
		t.Errorf("at most %d large read ran at once; want sleeping ones judged slow and run in parallel", m)
	}
}

// largeBackend sleeps for delay in each read of sleepCheckMin bytes or
// more, and records how many ran at once.
type largeBackend struct {
	*memBackend
	callCount
	delay time.Duration
}

func (b *largeBackend) ReadAt(p []byte, off int64) (int, error) {
	if len(p) >= sleepCheckMin {
		b.enter()
		defer b.leave()
		time.Sleep(b.delay)
	}
	return b.memBackend.ReadAt(p, off)
}

// countSeen says a count was unchanged over a span only when a look at or
// before the span's start and one after it saw the same value.
func TestCountSeen(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	var c countSeen
	for i, step := range []struct {
		n         int64
		now, from int
		want      bool
	}{
		{5, 10, 5, false},  // the first look: nothing to compare with
		{5, 20, 15, true},  // unchanged since 10, before the span began at 15
		{5, 30, 5, false},  // the span began before the first look
		{5, 40, 10, true},  // a span that began at the first look itself
		{6, 50, 45, false}, // the count moved
		{6, 60, 45, false}, // unchanged only since 50, after the span began
		{6, 70, 55, true},  // unchanged since 50
		{7, 80, 75, false}, // moved again
	} {
		if got := c.unchangedSince(step.n, at(step.now), at(step.from)); got != step.want {
			t.Errorf("step %d: count %d at %d ms, span from %d ms: %v, want %v", i, step.n, step.now, step.from, got, step.want)
		}
	}
}

// readBurst sends n reads of 4 KiB in one write, so they arrive together,
// and waits for every reply.
func (tc *tclient) readBurst(n int) { tc.readBurstOf(n, 4096) }

// readBurstOf sends n reads of size bytes at once and takes their replies.
func (tc *tclient) readBurstOf(n, size int) {
	tc.t.Helper()
	var reqs []byte
	for i := range uint64(n) {
		var h [requestLen]byte
		encodeRequest(&h, request{typ: cmdRead, handle: i, offset: i * uint64(size), length: uint32(size)})
		reqs = append(reqs, h[:]...)
	}
	tc.write(reqs)
	buf := make([]byte, size)
	for range n {
		if e, _ := tc.simple(); e != 0 {
			tc.t.Fatalf("read = errno %d", e)
		}
		tc.read(buf)
	}
}

// callCount records how many calls run at once, and the most seen.
type callCount struct{ now, most atomic.Int32 }

func (c *callCount) enter() {
	n := c.now.Add(1)
	for m := c.most.Load(); n > m && !c.most.CompareAndSwap(m, n); m = c.most.Load() {
	}
}

func (c *callCount) leave() { c.now.Add(-1) }

// cpuBackend spends a fixed amount of CPU on each read, as a copy from the
// page cache does, yielding now and then so that reads on workers take
// turns on the processor; it records how many ran at once.
type cpuBackend struct {
	*memBackend
	callCount
	work int
}

// calibrate sets the work of one read to about d of CPU.
func (b *cpuBackend) calibrate(d time.Duration) {
	b.work = 1000
	for {
		start := time.Now()
		b.spin()
		if took := time.Since(start); took >= d/2 {
			b.work = int(float64(b.work) * float64(d) / float64(took))
			return
		}
		b.work *= 2
	}
}

var cpuSink atomic.Int64 // keeps spin's work from being optimised away

func (b *cpuBackend) spin() {
	x := 0
	for i := range b.work {
		x += i * i
		if i%256 == 0 {
			runtime.Gosched()
		}
	}
	cpuSink.Add(int64(x))
}

func (b *cpuBackend) ReadAt(p []byte, off int64) (int, error) {
	b.enter()
	defer b.leave()
	b.spin()
	return b.memBackend.ReadAt(p, off)
}

// latencyBackend takes delay for each read, yielding rather than sleeping,
// and records how many ran at once.
type latencyBackend struct {
	*memBackend
	callCount
	delay time.Duration
}

func (l *latencyBackend) ReadAt(p []byte, off int64) (int, error) {
	l.enter()
	defer l.leave()
	for start := time.Now(); time.Since(start) < l.delay; {
		runtime.Gosched() // not a timer: it would sleep far longer than 100 µs
	}
	return l.memBackend.ReadAt(p, off)
}

// depthOneReads sends n reads at depth 1, of 512 bytes at off.
func (tc *tclient) depthOneReads(off uint64, n int) {
	tc.t.Helper()
	buf := make([]byte, 512)
	for range n {
		tc.request(0, cmdRead, 1, off, 512, nil)
		if e, h := tc.simple(); e != 0 || h != 1 {
			tc.t.Fatalf("read at depth 1 = errno %d handle %d", e, h)
		}
		tc.read(buf)
	}
}

// fastStreak sends reads at depth 1 (of 512 bytes at off), at least
// 4*inlineStreak, until the server's streak of fast requests is at its
// longest, so that it runs the next ones inline and one slow call does not
// end that. On a loaded machine (the race detector, tests running side by
// side) a read now and then takes long enough to count as slow.
func (tc *tclient) fastStreak(off uint64) {
	tc.t.Helper()
	tc.depthOneReads(off, 4*inlineStreak)
	for i := 0; tc.streak() != streakMax; i++ {
		if i == 100*inlineStreak {
			tc.t.Fatalf("%d more reads: the server's streak of fast calls is %d, want %d", i, tc.streak(), streakMax)
		}
		tc.depthOneReads(off, 1)
	}
}

// gateBackend blocks each read at offset 0 until the test sends on gate, and
// counts writes.
type gateBackend struct {
	*memBackend
	entered chan struct{}
	gate    chan struct{}
	writes  atomic.Int32
}

func (g *gateBackend) ReadAt(p []byte, off int64) (int, error) {
	if off == 0 {
		g.entered <- struct{}{}
		<-g.gate
	}
	return g.memBackend.ReadAt(p, off)
}

func (g *gateBackend) WriteAt(p []byte, off int64) (int, error) {
	g.writes.Add(1)
	return g.memBackend.WriteAt(p, off)
}

type slowBackend struct {
	*memBackend
	slowAt  int64
	entered chan struct{} // if not nil, receives when a slow read starts
	release chan struct{}
}

func (s *slowBackend) ReadAt(p []byte, off int64) (int, error) {
	if off == s.slowAt {
		if s.entered != nil {
			s.entered <- struct{}{}
		}
		<-s.release
	}
	return s.memBackend.ReadAt(p, off)
}

func TestShutdownDrainsAndAnswersESHUTDOWN(t *testing.T) {
	disk := newMem(testSize)
	slow := &slowBackend{memBackend: disk, slowAt: 0, entered: make(chan struct{}, 1), release: make(chan struct{})}
	s := &Server{Exports: ExportList{{Name: "disk", Open: func(net.Addr) (backend.Backend, error) { return slow, nil }}}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	tc := dialFixed(t, ln.Addr().String())
	tc.goExport("disk", false)
	tc.request(0, cmdRead, 1, 0, 512, nil) // in flight during shutdown
	<-slow.entered

	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	for !s.shutting.Load() {
		time.Sleep(time.Millisecond)
	}
	tc.request(0, cmdRead, 2, 4096, 512, nil)
	if e, h := tc.simple(); e != errShutdown || h != 2 {
		t.Fatalf("request after Shutdown = errno %d handle %d, want ESHUTDOWN", e, h)
	}
	close(slow.release)
	if e, h := tc.simple(); e != 0 || h != 1 {
		t.Fatalf("in-flight request = errno %d handle %d, want success", e, h)
	}
	tc.read(make([]byte, 512))
	tc.request(0, cmdDisc, 3, 0, 0, nil)
	tc.closed()
	if err := <-shut; err != nil {
		t.Errorf("Shutdown = %v", err)
	}
	if err := <-served; err != ErrServerClosed {
		t.Errorf("Serve = %v, want ErrServerClosed", err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Errorf("listener still accepts after Shutdown")
	}
}

func TestManyClients(t *testing.T) {
	addr, disk, _ := twoExports(t)
	var wg sync.WaitGroup
	const clients = 50
	for i := range clients {
		wg.Go(func() {
			tc := dialFixed(t, addr)
			tc.goExport("disk", i%2 == 0)
			off := uint64(i) * 4096
			tc.request(0, cmdWrite, 1, off, 4096, bytes.Repeat([]byte{byte(i)}, 4096))
			// Success without payload is a simple reply even with
			// structured replies negotiated.
			if e, _ := tc.simple(); e != 0 {
				t.Errorf("client %d: WRITE = %d", i, e)
			}
			tc.request(0, cmdDisc, 2, 0, 0, nil)
		})
	}
	wg.Wait()
	for i := range clients {
		if got := disk.bytesAt(i*4096, 1)[0]; got != byte(i) {
			t.Errorf("block %d = %d", i, got)
		}
	}
}

func TestServeConnInetd(t *testing.T) {
	// One connection over a socket pair, as inetd or nbdinfo [ CMD ] give.
	srvSide, cliSide := net.Pipe()
	s := &Server{Exports: ExportList{memExport("disk", newMem(testSize))}}
	done := make(chan struct{})
	go func() { s.ServeConn(srvSide); close(done) }()
	tc := &tclient{t: t, c: cliSide}
	tc.br = bufioReader(cliSide)
	var g [18]byte
	tc.read(g[:])
	tc.u32(flagCFixedNewstyle)
	if size, _ := tc.goExport("", false); size != testSize {
		t.Errorf("GO default export size = %d", size)
	}
	tc.request(0, cmdDisc, 1, 0, 0, nil)
	<-done
}

func TestIdleConnectionReleasesWorkers(t *testing.T) {
	s := &Server{trimEvery: 10 * time.Millisecond}
	addr := startServer(t, s, memExport("disk", newMem(testSize)))
	r := newRawConn(t, addr, 4096)
	r.batch(t, cmdRead, 4096, 16)
	parked := func() (n int32) {
		s.mu.Lock()
		defer s.mu.Unlock()
		for c := range s.conns {
			n += c.parked.Load()
		}
		return n
	}
	deadline := time.Now().Add(5 * time.Second)
	for parked() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d workers still parked on an idle connection", parked())
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.batch(t, cmdWrite, 4096, 16) // and it still serves
}

func TestShutdownLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	s := &Server{Exports: ExportList{memExport("disk", newMem(testSize))}, trimEvery: 10 * time.Millisecond}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	var conns []*rawConn
	for range 4 {
		r := newRawConn(t, ln.Addr().String(), 4096)
		r.batch(t, cmdWrite, 4096, 8)
		conns = append(conns, r)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-done
	for _, r := range conns {
		r.c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines before, %d after Shutdown:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestIdleTimeout(t *testing.T) {
	e := memExport("disk", newMem(testSize))
	e.IdleTimeout = 200 * time.Millisecond
	addr := startServer(t, &Server{}, e)
	tc := dialFixed(t, addr)
	tc.goExport("disk", false)
	// Requests keep it alive past the timeout...
	for i := range 4 {
		time.Sleep(100 * time.Millisecond)
		tc.request(0, cmdRead, uint64(i), 0, 512, nil)
		if e, _ := tc.simple(); e != 0 {
			t.Fatalf("READ %d = %d", i, e)
		}
		tc.read(make([]byte, 512))
	}
	// ...and silence ends it.
	start := time.Now()
	tc.closed()
	if d := time.Since(start); d < 150*time.Millisecond || d > 3*time.Second {
		t.Errorf("idle connection closed after %v, want about 200ms", d)
	}
}

// During shutdown a client still in the handshake is told so: every option
// but ABORT gets NBD_REP_ERR_SHUTDOWN until the grace ends.
func TestShutdownDuringHandshake(t *testing.T) {
	s := &Server{Exports: ExportList{memExport("disk", newMem(testSize))}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	tc := dialFixed(t, ln.Addr().String())
	tc.opt(optList, nil) // the connection is registered and mid-handshake
	tc.replies(optList)
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	for !s.shutting.Load() {
		time.Sleep(time.Millisecond)
	}
	tc.opt(optGo, exportReq("disk"))
	if rs := tc.replies(optGo); rs[len(rs)-1].typ != repErrShutdown {
		t.Errorf("GO during shutdown = %#x, want NBD_REP_ERR_SHUTDOWN", rs[len(rs)-1].typ)
	}
	tc.opt(optAbort, nil)
	if r := tc.reply(); r.typ != repAck {
		t.Errorf("ABORT during shutdown = %#x, want ACK", r.typ)
	}
	tc.closed()
	if err := <-shut; err != nil {
		t.Errorf("Shutdown = %v", err)
	}
}

// fuaBackend counts writes made durable on their own.
type fuaBackend struct {
	*memBackend
	fuaWrites int
}

func (f *fuaBackend) WriteAtFUA(p []byte, off int64) (int, error) {
	f.with(func() { f.fuaWrites++ })
	return f.memBackend.WriteAt(p, off)
}

func TestFUAWriteUsesTheStoragesOwnFUA(t *testing.T) {
	fb := &fuaBackend{memBackend: newMem(testSize)}
	addr := startServer(t, &Server{}, &Export{Name: "disk", Open: func(net.Addr) (backend.Backend, error) { return fb, nil }})
	tc := dialFixed(t, addr)
	tc.goExport("disk", false)
	tc.request(cmdFlagFUA, cmdWrite, 1, 0, 4, []byte("jrnl"))
	if e, _ := tc.simple(); e != 0 {
		t.Fatalf("FUA WRITE = %d", e)
	}
	var fua, flushes int
	fb.with(func() { fua, flushes = fb.fuaWrites, fb.flushes })
	if fua != 1 || flushes != 0 {
		t.Errorf("FUA WRITE: %d FUA writes and %d flushes, want 1 and 0", fua, flushes)
	}
}

// cachedBackend counts the storage calls made the cheaper way, for memory
// (backend.CachedReader and backend.CachedWriter).
type cachedBackend struct {
	*memBackend
	cachedReads, cachedWrites, writes atomic.Int32
}

func (b *cachedBackend) ReadAtCached(p []byte, off int64) (int, error) {
	b.cachedReads.Add(1)
	return b.memBackend.ReadAt(p, off)
}

func (b *cachedBackend) WriteAtCached(p []byte, off int64) (int, error) {
	b.cachedWrites.Add(1)
	return b.memBackend.WriteAt(p, off)
}

func (b *cachedBackend) WriteAt(p []byte, off int64) (int, error) {
	b.writes.Add(1)
	return b.memBackend.WriteAt(p, off)
}

// TestInlineCallsUseCachedStorage: requests the reader runs itself, after
// a streak of fast calls, read and write the cheaper way; the ones before
// the streak, on workers, do not.
func TestInlineCallsUseCachedStorage(t *testing.T) {
	cb := &cachedBackend{memBackend: newMem(testSize)}
	addr := startServer(t, &Server{}, &Export{
		Name: "disk",
		Open: func(net.Addr) (backend.Backend, error) { return cb, nil },
	})
	tc := dialFixed(t, addr)
	tc.goExport("disk", false)
	write := func(h uint64) {
		tc.request(0, cmdWrite, h, h*512, 512, bytes.Repeat([]byte{byte(h)}, 512))
		if e, got := tc.simple(); e != 0 || got != h {
			t.Fatalf("write = errno %d handle %d", e, got)
		}
	}
	write(1) // the first request runs on a worker: no streak yet
	if n, m := cb.writes.Load(), cb.cachedWrites.Load(); n != 1 || m != 0 {
		t.Fatalf("a write before any streak: %d plain, %d cached writes; want 1 plain", n, m)
	}
	tc.fastStreak(0)
	if cb.cachedReads.Load() == 0 {
		t.Error("no read of the fast streak's ran the cheaper way")
	}
	for h := uint64(2); h < 10; h++ {
		write(h)
	}
	if n, m := cb.writes.Load(), cb.cachedWrites.Load(); n != 1 || m != 8 {
		t.Errorf("8 writes after a fast streak: %d plain, %d cached in all; want 1 and 8", n, m)
	}
	if got := cb.bytesAt(9*512, 512); !bytes.Equal(got, bytes.Repeat([]byte{9}, 512)) {
		t.Error("the last write's bytes are not in the storage")
	}
}
