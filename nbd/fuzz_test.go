package nbd

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
)

func FuzzDecodeRequest(f *testing.F) {
	for _, r := range []request{
		{typ: cmdRead, handle: 1, offset: 4096, length: 512},
		{flags: cmdFlagFUA, typ: cmdWrite, handle: 1<<64 - 1, offset: 1<<64 - 1, length: 1<<32 - 1},
		{typ: cmdDisc},
	} {
		var b [requestLen]byte
		encodeRequest(&b, r)
		f.Add(b[:])
	}
	f.Add(make([]byte, requestLen))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < requestLen {
			return
		}
		b := (*[requestLen]byte)(data[:requestLen])
		r, err := decodeRequest(b)
		if err != nil {
			if binary.BigEndian.Uint32(data) == magicRequest {
				t.Fatalf("decodeRequest(%x) = %v with a good magic", data[:requestLen], err)
			}
			return
		}
		var again [requestLen]byte
		encodeRequest(&again, r)
		if again != *b {
			t.Fatalf("encode(decode(%x)) = %x", b[:], again)
		}
	})
}

func FuzzDecodeOptionData(f *testing.F) {
	f.Add(exportReq("disk", infoName, infoBlockSize))
	f.Add(exportReq(""))
	f.Add(metaReq("disk", "base:allocation", "x-a:b"))
	f.Add([]byte{0, 0, 0, 4, 'd', 'i', 's', 'k', 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		if req, ok := decodeExportRequest(data); ok {
			if again := exportReq(req.name, req.infos...); !bytes.Equal(again, data) {
				t.Fatalf("export request %x decoded to %+v, which encodes to %x", data, req, again)
			}
		}
		if req, ok := decodeMetaRequest(data); ok {
			if again := metaReq(req.name, req.queries...); !bytes.Equal(again, data) {
				t.Fatalf("meta request %x decoded to %+v, which encodes to %x", data, req, again)
			}
		}
	})
}

// FuzzServer feeds a whole client byte stream (everything after the
// server's greeting) to a live server connection. The server must neither
// panic nor hang, whatever the stream.
func FuzzServer(f *testing.F) {
	for _, seed := range serverSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		s := &Server{
			Exports:    ExportList{memExport("disk", newMem(64<<10))},
			MaxPayload: 64 << 10,
		}
		nc := NewPipeConn(bytes.NewReader(stream), io.Discard, &net.TCPAddr{}, nil)
		s.ServeConn(nc)
	})
}

// serverSeeds are client streams a real client could send, plus some that
// break the rules: the fuzzer mutates from here.
func serverSeeds() [][]byte {
	opt := func(b []byte, o uint32, data []byte) []byte {
		b = binary.BigEndian.AppendUint64(b, magicOpt)
		b = binary.BigEndian.AppendUint32(b, o)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	req := func(b []byte, flags, typ uint16, off uint64, n uint32, payload bool) []byte {
		var h [requestLen]byte
		encodeRequest(&h, request{flags: flags, typ: typ, handle: 7, offset: off, length: n})
		b = append(b, h[:]...)
		if payload {
			b = append(b, make([]byte, n)...)
		}
		return b
	}
	flags := binary.BigEndian.AppendUint32(nil, flagCFixedNewstyle|flagCNoZeroes)

	plain := opt(binary.BigEndian.AppendUint32(nil, 0), optExportName, []byte("disk"))
	plain = req(plain, 0, cmdWrite, 0, 512, true)
	plain = req(plain, 0, cmdRead, 0, 512, false)
	plain = req(plain, 0, cmdDisc, 0, 0, false)

	structured := opt(bytes.Clone(flags), optStructuredReply, nil)
	structured = opt(structured, optListMetaContext, metaReq("disk"))
	structured = opt(structured, optSetMetaContext, metaReq("disk", "base:allocation"))
	structured = opt(structured, optList, nil)
	structured = opt(structured, optInfo, exportReq("disk", infoBlockSize, infoName, infoDescription))
	structured = opt(structured, optGo, exportReq("disk", infoBlockSize))
	structured = req(structured, 0, cmdBlockStatus, 0, 8192, false)
	structured = req(structured, cmdFlagDF, cmdRead, 0, 8192, false)
	structured = req(structured, cmdFlagNoHole, cmdWriteZeroes, 0, 4096, false)
	structured = req(structured, 0, cmdTrim, 4096, 4096, false)
	structured = req(structured, cmdFlagFUA, cmdWrite, 100, 10, true)
	structured = req(structured, 0, cmdFlush, 0, 0, false)
	structured = req(structured, 0, 42, 0, 0, false)
	structured = req(structured, 0, cmdRead, 1<<20, 1, false)

	bad := opt(bytes.Clone(flags), 99, []byte("junk"))
	bad = opt(bad, optStartTLS, nil)
	bad = opt(bad, optGo, []byte{0, 0, 0, 200})
	bad = opt(bad, optAbort, nil)

	return [][]byte{plain, structured, bad, flags, {0xff, 0xff, 0xff, 0xff}}
}
