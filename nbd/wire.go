package nbd

import (
	"encoding/binary"
	"errors"
)

// Wire constants, named as in the NBD protocol document (doc/proto.md of the
// NetworkBlockDevice/nbd repository) and grouped as it groups them.

// Magic numbers.
const (
	magicInit      uint64 = 0x4e42444d41474943 // NBDMAGIC (INIT_PASSWD)
	magicOpt       uint64 = 0x49484156454F5054 // IHAVEOPT
	magicOptReply  uint64 = 0x3e889045565a9    // option reply magic
	magicRequest   uint32 = 0x25609513         // NBD_REQUEST_MAGIC
	magicSimple    uint32 = 0x67446698         // NBD_SIMPLE_REPLY_MAGIC
	magicStructure uint32 = 0x668e33ef         // NBD_STRUCTURED_REPLY_MAGIC
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle  uint16 = 1 << 0 // NBD_FLAG_FIXED_NEWSTYLE
	flagNoZeroes       uint16 = 1 << 1 // NBD_FLAG_NO_ZEROES
	flagCFixedNewstyle uint32 = 1 << 0 // NBD_FLAG_C_FIXED_NEWSTYLE
	flagCNoZeroes      uint32 = 1 << 1 // NBD_FLAG_C_NO_ZEROES
)

// Transmission flags.
const (
	flagHasFlags        uint16 = 1 << 0  // NBD_FLAG_HAS_FLAGS
	flagReadOnly        uint16 = 1 << 1  // NBD_FLAG_READ_ONLY
	flagSendFlush       uint16 = 1 << 2  // NBD_FLAG_SEND_FLUSH
	flagSendFUA         uint16 = 1 << 3  // NBD_FLAG_SEND_FUA
	flagRotational      uint16 = 1 << 4  // NBD_FLAG_ROTATIONAL
	flagSendTrim        uint16 = 1 << 5  // NBD_FLAG_SEND_TRIM
	flagSendWriteZeroes uint16 = 1 << 6  // NBD_FLAG_SEND_WRITE_ZEROES
	flagSendDF          uint16 = 1 << 7  // NBD_FLAG_SEND_DF
	flagCanMultiConn    uint16 = 1 << 8  // NBD_FLAG_CAN_MULTI_CONN
	flagSendCache       uint16 = 1 << 10 // NBD_FLAG_SEND_CACHE
	flagSendFastZero    uint16 = 1 << 11 // NBD_FLAG_SEND_FAST_ZERO
)

// Option types.
const (
	optExportName      uint32 = 1  // NBD_OPT_EXPORT_NAME
	optAbort           uint32 = 2  // NBD_OPT_ABORT
	optList            uint32 = 3  // NBD_OPT_LIST
	optStartTLS        uint32 = 5  // NBD_OPT_STARTTLS
	optInfo            uint32 = 6  // NBD_OPT_INFO
	optGo              uint32 = 7  // NBD_OPT_GO
	optStructuredReply uint32 = 8  // NBD_OPT_STRUCTURED_REPLY
	optListMetaContext uint32 = 9  // NBD_OPT_LIST_META_CONTEXT
	optSetMetaContext  uint32 = 10 // NBD_OPT_SET_META_CONTEXT
)

// Option reply types.
const (
	repAck         uint32 = 1         // NBD_REP_ACK
	repServer      uint32 = 2         // NBD_REP_SERVER
	repInfo        uint32 = 3         // NBD_REP_INFO
	repMetaContext uint32 = 4         // NBD_REP_META_CONTEXT
	repErrUnsup    uint32 = 1<<31 + 1 // NBD_REP_ERR_UNSUP
	repErrPolicy   uint32 = 1<<31 + 2 // NBD_REP_ERR_POLICY
	repErrInvalid  uint32 = 1<<31 + 3 // NBD_REP_ERR_INVALID
	repErrTLSReqd  uint32 = 1<<31 + 5 // NBD_REP_ERR_TLS_REQD
	repErrUnknown  uint32 = 1<<31 + 6 // NBD_REP_ERR_UNKNOWN
	repErrShutdown uint32 = 1<<31 + 7 // NBD_REP_ERR_SHUTDOWN
	repErrTooBig   uint32 = 1<<31 + 9 // NBD_REP_ERR_TOO_BIG
)

// Information types in NBD_REP_INFO.
const (
	infoExport      uint16 = 0 // NBD_INFO_EXPORT
	infoName        uint16 = 1 // NBD_INFO_NAME
	infoDescription uint16 = 2 // NBD_INFO_DESCRIPTION
	infoBlockSize   uint16 = 3 // NBD_INFO_BLOCK_SIZE
)

// Command types.
const (
	cmdRead        uint16 = 0 // NBD_CMD_READ
	cmdWrite       uint16 = 1 // NBD_CMD_WRITE
	cmdDisc        uint16 = 2 // NBD_CMD_DISC
	cmdFlush       uint16 = 3 // NBD_CMD_FLUSH
	cmdTrim        uint16 = 4 // NBD_CMD_TRIM
	cmdCache       uint16 = 5 // NBD_CMD_CACHE
	cmdWriteZeroes uint16 = 6 // NBD_CMD_WRITE_ZEROES
	cmdBlockStatus uint16 = 7 // NBD_CMD_BLOCK_STATUS
)

// Command flags.
const (
	cmdFlagFUA      uint16 = 1 << 0 // NBD_CMD_FLAG_FUA
	cmdFlagNoHole   uint16 = 1 << 1 // NBD_CMD_FLAG_NO_HOLE
	cmdFlagDF       uint16 = 1 << 2 // NBD_CMD_FLAG_DF
	cmdFlagReqOne   uint16 = 1 << 3 // NBD_CMD_FLAG_REQ_ONE
	cmdFlagFastZero uint16 = 1 << 4 // NBD_CMD_FLAG_FAST_ZERO
)

// Structured reply flags and types.
const (
	replyFlagDone        uint16 = 1 << 0    // NBD_REPLY_FLAG_DONE
	replyTypeNone        uint16 = 0         // NBD_REPLY_TYPE_NONE
	replyTypeOffsetData  uint16 = 1         // NBD_REPLY_TYPE_OFFSET_DATA
	replyTypeOffsetHole  uint16 = 2         // NBD_REPLY_TYPE_OFFSET_HOLE
	replyTypeBlockStatus uint16 = 5         // NBD_REPLY_TYPE_BLOCK_STATUS
	replyTypeError       uint16 = 1<<15 + 1 // NBD_REPLY_TYPE_ERROR
	replyTypeErrorOffset uint16 = 1<<15 + 2 // NBD_REPLY_TYPE_ERROR_OFFSET
)

// base:allocation status flags.
const (
	stateHole uint32 = 1 << 0 // NBD_STATE_HOLE
	stateZero uint32 = 1 << 1 // NBD_STATE_ZERO
)

// Error values.
const (
	errPerm     uint32 = 1   // NBD_EPERM
	errIO       uint32 = 5   // NBD_EIO
	errNoMem    uint32 = 12  // NBD_ENOMEM
	errInval    uint32 = 22  // NBD_EINVAL
	errNoSpc    uint32 = 28  // NBD_ENOSPC
	errOverflow uint32 = 75  // NBD_EOVERFLOW
	errNotSup   uint32 = 95  // NBD_ENOTSUP
	errShutdown uint32 = 108 // NBD_ESHUTDOWN
)

// Sizes of the fixed parts of messages.
const (
	optHeaderLen       = 16  // IHAVEOPT, option, length
	optReplyHeaderLen  = 20  // magic, option, reply type, length
	requestLen         = 28  // magic, flags, type, handle, offset, length
	simpleReplyLen     = 16  // magic, error, handle
	structReplyLen     = 20  // magic, flags, type, handle, length
	exportNameZeroes   = 124 // reserved bytes after NBD_OPT_EXPORT_NAME
	maxStringLen       = 4096
	metaContextBaseID  = 1 // the id we give base:allocation
	metaBaseAllocation = "base:allocation"
)

var (
	errBadMagic = errors.New("nbd: bad magic")
)

// request is a decoded transmission request header.
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	offset uint64
	length uint32
}

// decodeRequest decodes a 28-byte request header. It fails only on a bad
// magic; the meaning of the fields is checked by the caller.
func decodeRequest(b *[requestLen]byte) (request, error) {
	if binary.BigEndian.Uint32(b[0:4]) != magicRequest {
		return request{}, errBadMagic
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:6]),
		typ:    binary.BigEndian.Uint16(b[6:8]),
		handle: binary.BigEndian.Uint64(b[8:16]),
		offset: binary.BigEndian.Uint64(b[16:24]),
		length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// encodeRequest is the inverse of decodeRequest; tests and fuzzers use it.
func encodeRequest(b *[requestLen]byte, r request) {
	binary.BigEndian.PutUint32(b[0:4], magicRequest)
	binary.BigEndian.PutUint16(b[4:6], r.flags)
	binary.BigEndian.PutUint16(b[6:8], r.typ)
	binary.BigEndian.PutUint64(b[8:16], r.handle)
	binary.BigEndian.PutUint64(b[16:24], r.offset)
	binary.BigEndian.PutUint32(b[24:28], r.length)
}

// putSimpleReply fills a simple reply header.
func putSimpleReply(b []byte, errno uint32, handle uint64) {
	_ = b[simpleReplyLen-1]
	binary.BigEndian.PutUint32(b[0:4], magicSimple)
	binary.BigEndian.PutUint32(b[4:8], errno)
	binary.BigEndian.PutUint64(b[8:16], handle)
}

// putStructReply fills a structured reply chunk header.
func putStructReply(b []byte, flags, typ uint16, handle uint64, length uint32) {
	_ = b[structReplyLen-1]
	binary.BigEndian.PutUint32(b[0:4], magicStructure)
	binary.BigEndian.PutUint16(b[4:6], flags)
	binary.BigEndian.PutUint16(b[6:8], typ)
	binary.BigEndian.PutUint64(b[8:16], handle)
	binary.BigEndian.PutUint32(b[16:20], length)
}

// putOptReply fills an option reply header.
func putOptReply(b []byte, opt, typ uint32, length uint32) {
	_ = b[optReplyHeaderLen-1]
	binary.BigEndian.PutUint64(b[0:8], magicOptReply)
	binary.BigEndian.PutUint32(b[8:12], opt)
	binary.BigEndian.PutUint32(b[12:16], typ)
	binary.BigEndian.PutUint32(b[16:20], length)
}

// optReader decodes option payloads. Every read is checked against the
// remaining data; the first short read sticks, so callers check ok once.
type optReader struct {
	b  []byte
	ok bool
}

func newOptReader(b []byte) *optReader { return &optReader{b: b, ok: true} }

func (r *optReader) u16() uint16 {
	if len(r.b) < 2 {
		r.ok = false
		r.b = nil
		return 0
	}
	v := binary.BigEndian.Uint16(r.b)
	r.b = r.b[2:]
	return v
}

func (r *optReader) u32() uint32 {
	if len(r.b) < 4 {
		r.ok = false
		r.b = nil
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

// str reads a string of n bytes, refusing lengths over the protocol's limit.
func (r *optReader) str(n uint32) string {
	if n > maxStringLen || uint64(n) > uint64(len(r.b)) {
		r.ok = false
		r.b = nil
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

// done reports whether every byte was consumed and nothing was short.
func (r *optReader) done() bool { return r.ok && len(r.b) == 0 }

// exportRequest is the payload of NBD_OPT_INFO and NBD_OPT_GO.
type exportRequest struct {
	name  string
	infos []uint16
}

// decodeExportRequest decodes the NBD_OPT_INFO / NBD_OPT_GO payload.
func decodeExportRequest(data []byte) (exportRequest, bool) {
	r := newOptReader(data)
	var req exportRequest
	req.name = r.str(r.u32())
	n := r.u16()
	if !r.ok || len(r.b) != 2*int(n) {
		return exportRequest{}, false
	}
	req.infos = make([]uint16, n)
	for i := range req.infos {
		req.infos[i] = r.u16()
	}
	return req, r.done()
}

// metaRequest is the payload of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT.
type metaRequest struct {
	name    string
	queries []string
}

// decodeMetaRequest decodes a meta context option payload.
func decodeMetaRequest(data []byte) (metaRequest, bool) {
	r := newOptReader(data)
	var req metaRequest
	req.name = r.str(r.u32())
	n := r.u32()
	// Each query takes at least 4 bytes: bound n before allocating.
	if !r.ok || uint64(n)*4 > uint64(len(r.b)) {
		return metaRequest{}, false
	}
	req.queries = make([]string, 0, n)
	for range n {
		req.queries = append(req.queries, r.str(r.u32()))
	}
	return req, r.done()
}
