//go:build linux

package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// The least of the NBD protocol a client needs to reach the transmission
// phase with NBD_OPT_GO and leave it with NBD_CMD_DISC. The bench keeps
// its own copy, apart from boardnbd's nbd package, so that it measures
// every server, boardnbd included, from the outside.

// Handshake magics.
const (
	magicInit     uint64 = 0x4e42444d41474943 // NBDMAGIC
	magicOpt      uint64 = 0x49484156454f5054 // IHAVEOPT
	magicOptReply uint64 = 0x0003e889045565a9 // option reply magic
	magicRequest  uint32 = 0x25609513         // NBD_REQUEST_MAGIC
)

// Handshake flags, server and client.
const (
	flagFixedNewstyle  uint16 = 1 << 0 // NBD_FLAG_FIXED_NEWSTYLE
	flagNoZeroes       uint16 = 1 << 1 // NBD_FLAG_NO_ZEROES
	flagCFixedNewstyle uint32 = 1 << 0 // NBD_FLAG_C_FIXED_NEWSTYLE
	flagCNoZeroes      uint32 = 1 << 1 // NBD_FLAG_C_NO_ZEROES
)

// Transmission flags.
const (
	flagHasFlags     uint16 = 1 << 0 // NBD_FLAG_HAS_FLAGS
	flagReadOnly     uint16 = 1 << 1 // NBD_FLAG_READ_ONLY
	flagCanMultiConn uint16 = 1 << 8 // NBD_FLAG_CAN_MULTI_CONN
)

// Options, replies and information types.
const (
	optGo      uint32 = 7       // NBD_OPT_GO
	repAck     uint32 = 1       // NBD_REP_ACK
	repInfo    uint32 = 3       // NBD_REP_INFO
	repFlagErr uint32 = 1 << 31 // error replies have this bit set
	infoExport uint16 = 0       // NBD_INFO_EXPORT
)

// Commands.
const (
	cmdDisc uint16 = 2 // NBD_CMD_DISC
)

// maxOptReply caps the data of one option reply the client will read.
const maxOptReply = 64 << 10

var (
	errNotNBD       = errors.New("nbdbench: not an NBD newstyle server")
	errOptReply     = errors.New("nbdbench: bad option reply")
	errNoExportInfo = errors.New("nbdbench: NBD_OPT_GO succeeded without NBD_INFO_EXPORT")
)

// exportInfo is what NBD_OPT_GO told about an export.
type exportInfo struct {
	size  uint64
	flags uint16 // transmission flags
}

func (e exportInfo) multiConn() bool { return e.flags&flagCanMultiConn != 0 }

// optError is an error reply to an option.
type optError struct {
	typ uint32
	msg string
}

func (e *optError) Error() string {
	return fmt.Sprintf("nbdbench: server refused NBD_OPT_GO: reply %d: %s", e.typ&^repFlagErr, e.msg)
}

// handshake negotiates fixed newstyle and NBD_OPT_GO for export name on
// rw, leaving it in the transmission phase.
func handshake(rw io.ReadWriter, name string) (exportInfo, error) {
	var info exportInfo
	var greet [18]byte
	if _, err := io.ReadFull(rw, greet[:]); err != nil {
		return info, fmt.Errorf("greeting: %w", err)
	}
	if binary.BigEndian.Uint64(greet[0:8]) != magicInit || binary.BigEndian.Uint64(greet[8:16]) != magicOpt {
		return info, errNotNBD
	}
	sflags := binary.BigEndian.Uint16(greet[16:18])
	if sflags&flagFixedNewstyle == 0 {
		return info, fmt.Errorf("%w: no fixed newstyle", errNotNBD)
	}
	cflags := flagCFixedNewstyle
	if sflags&flagNoZeroes != 0 {
		cflags |= flagCNoZeroes
	}
	// Client flags, then the option header and NBD_OPT_GO's data (name
	// length, name, zero information requests), in one write.
	msg := make([]byte, 0, 4+16+4+len(name)+2)
	msg = binary.BigEndian.AppendUint32(msg, cflags)
	msg = binary.BigEndian.AppendUint64(msg, magicOpt)
	msg = binary.BigEndian.AppendUint32(msg, optGo)
	msg = binary.BigEndian.AppendUint32(msg, uint32(4+len(name)+2))
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(name)))
	msg = append(msg, name...)
	msg = binary.BigEndian.AppendUint16(msg, 0)
	if _, err := rw.Write(msg); err != nil {
		return info, err
	}
	got := false
	for {
		var hdr [20]byte
		if _, err := io.ReadFull(rw, hdr[:]); err != nil {
			return info, fmt.Errorf("option reply: %w", err)
		}
		if binary.BigEndian.Uint64(hdr[0:8]) != magicOptReply {
			return info, fmt.Errorf("%w: magic %#x", errOptReply, hdr[0:8])
		}
		if opt := binary.BigEndian.Uint32(hdr[8:12]); opt != optGo {
			return info, fmt.Errorf("%w: reply to option %d, want %d", errOptReply, opt, optGo)
		}
		typ := binary.BigEndian.Uint32(hdr[12:16])
		n := binary.BigEndian.Uint32(hdr[16:20])
		if n > maxOptReply {
			return info, fmt.Errorf("%w: %d bytes", errOptReply, n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(rw, data); err != nil {
			return info, fmt.Errorf("option reply data: %w", err)
		}
		switch {
		case typ&repFlagErr != 0:
			return info, &optError{typ: typ, msg: string(data)}
		case typ == repAck:
			if !got {
				return info, errNoExportInfo
			}
			return info, nil
		case typ == repInfo:
			if len(data) < 2 {
				return info, fmt.Errorf("%w: NBD_REP_INFO of %d bytes", errOptReply, len(data))
			}
			if binary.BigEndian.Uint16(data[0:2]) == infoExport {
				if len(data) != 12 {
					return info, fmt.Errorf("%w: NBD_INFO_EXPORT of %d bytes", errOptReply, len(data))
				}
				info.size = binary.BigEndian.Uint64(data[2:10])
				info.flags = binary.BigEndian.Uint16(data[10:12])
				got = true
			}
		default:
			return info, fmt.Errorf("%w: type %d", errOptReply, typ)
		}
	}
}

// disconnect sends NBD_CMD_DISC, which has no reply.
func disconnect(w io.Writer) error {
	var req [28]byte
	binary.BigEndian.PutUint32(req[0:4], magicRequest)
	binary.BigEndian.PutUint16(req[6:8], cmdDisc)
	_, err := w.Write(req[:])
	return err
}

// dialExport connects to addr and completes NBD_OPT_GO for name.
func dialExport(addr, name string, timeout time.Duration) (net.Conn, exportInfo, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, exportInfo{}, err
	}
	c.SetDeadline(time.Now().Add(timeout))
	info, err := handshake(c, name)
	if err != nil {
		c.Close()
		return nil, info, fmt.Errorf("%s export %q: %w", addr, name, err)
	}
	c.SetDeadline(time.Time{})
	return c, info, nil
}

// probeExport runs one handshake to learn the export's size and flags,
// then disconnects politely.
func probeExport(addr, name string) (exportInfo, error) {
	c, info, err := dialExport(addr, name, 5*time.Second)
	if err != nil {
		return info, err
	}
	defer c.Close()
	return info, disconnect(c)
}
