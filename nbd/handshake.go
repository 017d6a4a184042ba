package nbd

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"boardnbd/nbd/backend"
)

// maxOptionLen caps the data of one option. The largest legitimate option is
// a meta context request with a few queries; export names are at most 4096
// bytes. Anything larger is treated as an attack and ends the connection
// before a byte of it is allocated.
const maxOptionLen = 64 << 10

// Errors that end a handshake. They are logged, never sent.
var (
	errClientFlags    = errors.New("nbd: client sent unknown handshake flags")
	errOptionTooLong  = errors.New("nbd: option data longer than 64 KiB")
	errAborted        = errors.New("nbd: client aborted the handshake")
	errNoExport       = errors.New("nbd: NBD_OPT_EXPORT_NAME for an export that cannot be served")
	errTLSRequired    = errors.New("nbd: NBD_OPT_EXPORT_NAME before STARTTLS on a server or export that requires TLS")
	errTLSHandshake   = errors.New("nbd: TLS handshake failed")
	errExportNeedsTLS = errors.New("nbd: export requires TLS")
)

// handshake runs the fixed newstyle negotiation. On success the connection
// has an export open and is ready for transmission.
func (c *conn) handshake() error {
	var greet [18]byte
	binary.BigEndian.PutUint64(greet[0:8], magicInit)
	binary.BigEndian.PutUint64(greet[8:16], magicOpt)
	binary.BigEndian.PutUint16(greet[16:18], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.nc.Write(greet[:]); err != nil {
		return err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return err
	}
	clientFlags := binary.BigEndian.Uint32(cf[:])
	if clientFlags&^(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		return fmt.Errorf("%w: %#x", errClientFlags, clientFlags)
	}
	c.noZeroes = clientFlags&flagCNoZeroes != 0
	c.fixed = clientFlags&flagCFixedNewstyle != 0

	var hdr [optHeaderLen]byte
	for {
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return err
		}
		if binary.BigEndian.Uint64(hdr[0:8]) != magicOpt {
			return fmt.Errorf("%w in option header", errBadMagic)
		}
		opt := binary.BigEndian.Uint32(hdr[8:12])
		length := binary.BigEndian.Uint32(hdr[12:16])
		if length > maxOptionLen {
			return fmt.Errorf("%w: option %d with %d bytes", errOptionTooLong, opt, length)
		}
		data := c.optBuf[:0]
		if int(length) > cap(data) {
			data = make([]byte, length)
		}
		data = data[:length]
		if _, err := io.ReadFull(c.br, data); err != nil {
			return err
		}
		done, err := c.option(opt, data)
		if err != nil || done {
			return err
		}
	}
}

// option answers one option. It reports done when transmission begins.
func (c *conn) option(opt uint32, data []byte) (done bool, err error) {
	if c.srv.shutting.Load() {
		if opt == optAbort {
			c.optReply(opt, repAck, nil)
			return false, errAborted
		}
		if opt == optExportName {
			return false, ErrServerClosed
		}
		return false, c.optError(opt, repErrShutdown, "server is shutting down")
	}
	if c.srv.RequireTLS && !c.tls && opt != optStartTLS && opt != optAbort {
		if opt == optExportName {
			return false, errTLSRequired
		}
		return false, c.optError(opt, repErrTLSReqd, "this server requires TLS: use NBD_OPT_STARTTLS")
	}
	switch opt {
	case optExportName:
		return true, c.optExportName(data)
	case optAbort:
		// The reply is a courtesy: the client may already be gone.
		c.optReply(opt, repAck, nil)
		return false, errAborted
	case optList:
		return false, c.optList(data)
	case optStartTLS:
		return false, c.optStartTLS(data)
	case optInfo, optGo:
		return c.optInfoGo(opt, data)
	case optStructuredReply:
		if len(data) != 0 {
			return false, c.optError(opt, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
		}
		if c.structured {
			return false, c.optError(opt, repErrInvalid, "structured replies already negotiated")
		}
		c.structured = true
		return false, c.optReply(opt, repAck, nil)
	case optListMetaContext, optSetMetaContext:
		return false, c.optMetaContext(opt, data)
	default:
		return false, c.optError(opt, repErrUnsup, fmt.Sprintf("option %d is not supported", opt))
	}
}

// optReply sends one option reply with its payload.
func (c *conn) optReply(opt, typ uint32, payload []byte) error {
	var hdr [optReplyHeaderLen]byte
	putOptReply(hdr[:], opt, typ, uint32(len(payload)))
	return c.writeAll(hdr[:], payload)
}

// optError sends an error reply carrying a message for the user.
func (c *conn) optError(opt, typ uint32, msg string) error {
	c.log.Debug("option refused", "option", opt, "reply", typ&^(1<<31), "msg", msg)
	return c.optReply(opt, typ, []byte(msg))
}

// optStartTLS upgrades the connection to TLS. After the ACK there is no way
// back: a failed TLS handshake ends the connection.
func (c *conn) optStartTLS(data []byte) error {
	switch {
	case len(data) != 0:
		return c.optError(optStartTLS, repErrInvalid, "NBD_OPT_STARTTLS takes no data")
	case c.srv.TLSConfig == nil:
		return c.optError(optStartTLS, repErrPolicy, "TLS is not configured on this server")
	case !c.fixed:
		// The spec allows TLS only after fixed newstyle was agreed.
		return c.optError(optStartTLS, repErrPolicy, "TLS needs the fixed newstyle handshake")
	case c.tls:
		return c.optError(optStartTLS, repErrInvalid, "TLS is already running")
	}
	if err := c.optReply(optStartTLS, repAck, nil); err != nil {
		return err
	}
	if c.br.Buffered() > 0 {
		return fmt.Errorf("%w: client sent data before the TLS handshake", errTLSHandshake)
	}
	tc := tls.Server(c.raw, c.srv.TLSConfig)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("%w: %v", errTLSHandshake, err)
	}
	c.nc, c.tls = tc, true
	c.br.Reset(tc)
	c.sock = nil // br reads TLS records through net.Conn now, not through sockReader
	c.sw = nil   // and replies go out through it
	// Nothing negotiated in the clear survives the upgrade.
	c.structured, c.metaOK, c.metaExport = false, false, ""
	st := tc.ConnectionState()
	attrs := []any{"version", tls.VersionName(st.Version)}
	if len(st.PeerCertificates) > 0 {
		attrs = append(attrs, "client_cert", st.PeerCertificates[0].Subject.String())
	}
	c.log.Debug("TLS started", attrs...)
	return nil
}

func (c *conn) optList(data []byte) error {
	if len(data) != 0 {
		return c.optError(optList, repErrInvalid, "NBD_OPT_LIST takes no data")
	}
	for _, e := range c.srv.Exports.List(c.nc.RemoteAddr()) {
		if e.TLSOnly && !c.tls {
			continue
		}
		p := make([]byte, 4, 4+len(e.Name)+len(e.Description))
		binary.BigEndian.PutUint32(p, uint32(len(e.Name)))
		p = append(p, e.Name...)
		p = append(p, e.Description...)
		if err := c.optReply(optList, repServer, p); err != nil {
			return err
		}
	}
	return c.optReply(optList, repAck, nil)
}

// lookupError turns an export resolution error into an option reply.
func (c *conn) lookupError(opt uint32, name string, err error) error {
	switch {
	case errors.Is(err, errExportNeedsTLS):
		return c.optError(opt, repErrTLSReqd, fmt.Sprintf("export %q requires TLS: use NBD_OPT_STARTTLS", name))
	case errors.Is(err, ErrUnknownExport):
		// A mistyped export name is the most common lab problem: say it
		// at the default level.
		c.log.Info("client asked for an export that does not exist (or is not for it)", "export", name)
		return c.optError(opt, repErrUnknown, fmt.Sprintf("no export named %q", name))
	case errors.Is(err, ErrNotAllowed):
		return c.optError(opt, repErrPolicy, fmt.Sprintf("export %q: %v", name, err))
	default:
		// Unavailable, or the storage failed to open: the client may
		// retry later, so say so; ERR_UNKNOWN is "not available".
		c.log.Warn("export could not be opened", "export", name, "err", err)
		return c.optError(opt, repErrUnknown, fmt.Sprintf("export %q is not available: %v", name, err))
	}
}

// open resolves and opens an export for this client.
func (c *conn) open(name string) (*Export, backend.Backend, error) {
	e, err := c.srv.Exports.Lookup(name, c.nc.RemoteAddr())
	if err != nil {
		return nil, nil, err
	}
	if e.TLSOnly && !c.tls {
		return nil, nil, errExportNeedsTLS
	}
	b, err := e.Open(c.nc.RemoteAddr())
	if err != nil {
		return nil, nil, err
	}
	return e, b, nil
}

func (c *conn) optExportName(data []byte) error {
	if len(data) > maxStringLen {
		return errNoExport
	}
	name := string(data)
	e, b, err := c.open(name)
	if err != nil {
		c.log.Info("NBD_OPT_EXPORT_NAME cannot be served; hanging up, as that option has no error reply", "export", name, "err", err)
		return fmt.Errorf("%w: %q: %v", errNoExport, name, err)
	}
	c.start(e, b, false)
	var p [8 + 2 + exportNameZeroes]byte
	binary.BigEndian.PutUint64(p[0:8], c.size)
	binary.BigEndian.PutUint16(p[8:10], c.tflags)
	n := len(p)
	if c.noZeroes {
		n = 10
	}
	return c.writeAll(p[:n], nil)
}

func (c *conn) optInfoGo(opt uint32, data []byte) (bool, error) {
	req, ok := decodeExportRequest(data)
	if !ok {
		return false, c.optError(opt, repErrInvalid, "malformed NBD_OPT_INFO/GO data")
	}
	e, b, err := c.open(req.name)
	if err != nil {
		return false, c.lookupError(opt, req.name, err)
	}
	blockSizeAsked := false
	for _, i := range req.infos {
		blockSizeAsked = blockSizeAsked || i == infoBlockSize
	}
	size, tflags := exportShape(e, b, c.structured)
	info := b.Info()

	var p [2 + 8 + 2]byte
	binary.BigEndian.PutUint16(p[0:2], infoExport)
	binary.BigEndian.PutUint64(p[2:10], size)
	binary.BigEndian.PutUint16(p[10:12], tflags)
	err = c.optReply(opt, repInfo, p[:])
	for _, i := range req.infos {
		if err != nil {
			break
		}
		switch i {
		case infoName:
			err = c.optReply(opt, repInfo, infoString(infoName, e.Name))
		case infoDescription:
			if e.Description != "" {
				err = c.optReply(opt, repInfo, infoString(infoDescription, e.Description))
			}
		case infoBlockSize:
			var bs [2 + 12]byte
			minB, prefB, maxB := c.blockSizes(info)
			binary.BigEndian.PutUint16(bs[0:2], infoBlockSize)
			binary.BigEndian.PutUint32(bs[2:6], minB)
			binary.BigEndian.PutUint32(bs[6:10], prefB)
			binary.BigEndian.PutUint32(bs[10:14], maxB)
			err = c.optReply(opt, repInfo, bs[:])
		}
	}
	if err == nil {
		err = c.optReply(opt, repAck, nil)
	}
	if opt == optInfo || err != nil {
		b.Close()
		return false, err
	}
	c.start(e, b, blockSizeAsked)
	c.metaOK = c.metaOK && c.metaExport == e.Name
	return true, nil
}

func infoString(typ uint16, s string) []byte {
	p := make([]byte, 2, 2+len(s))
	binary.BigEndian.PutUint16(p, typ)
	return append(p, s...)
}

// blockSizes returns the constraints advertised for an export: the
// backend's sector size as the minimum, its preferred I/O size, and the
// largest payload this server accepts.
func (c *conn) blockSizes(info backend.Info) (minB, prefB, maxB uint32) {
	minB, prefB = info.MinBlock, info.PreferredBlock
	if minB == 0 {
		minB = 1
	}
	if prefB == 0 {
		prefB = 4096
	}
	prefB = max(prefB, minB, 512)
	maxB = c.srv.maxPayload()
	maxB -= maxB % minB
	return minB, prefB, maxB
}

// exportShape computes the size and transmission flags of an open export.
// INFO and GO both use it, so their answers agree.
func exportShape(e *Export, b backend.Backend, structured bool) (uint64, uint16) {
	info := b.Info()
	f := flagHasFlags | flagSendCache
	if !e.NoFlush {
		f |= flagSendFlush
		if !e.NoFUA {
			f |= flagSendFUA
		}
	}
	if e.ReadOnly || info.ReadOnly {
		f |= flagReadOnly
	} else {
		f |= flagSendWriteZeroes | flagSendFastZero
		if info.CanTrim && !e.NoTrim {
			f |= flagSendTrim
		}
	}
	if structured {
		f |= flagSendDF
	}
	if info.SharedCache && !e.NoMultiConn {
		f |= flagCanMultiConn
	}
	if info.Rotational {
		f |= flagRotational
	}
	return uint64(b.Size()), f
}

// optMetaContext answers NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT. The only context is base:allocation.
func (c *conn) optMetaContext(opt uint32, data []byte) error {
	set := opt == optSetMetaContext
	if set {
		// A SET replaces the previous selection even when it fails.
		c.metaOK, c.metaExport = false, ""
	}
	if !c.structured {
		return c.optError(opt, repErrInvalid, "negotiate structured replies first")
	}
	req, ok := decodeMetaRequest(data)
	if !ok {
		return c.optError(opt, repErrInvalid, "malformed meta context request")
	}
	e, err := c.srv.Exports.Lookup(req.name, c.nc.RemoteAddr())
	if err != nil {
		return c.lookupError(opt, req.name, err)
	}
	if e.TLSOnly && !c.tls {
		// The spec keeps NBD_REP_ERR_TLS_REQD for INFO and GO.
		return c.optError(opt, repErrPolicy, fmt.Sprintf("export %q requires TLS", req.name))
	}
	match := !set && len(req.queries) == 0
	for _, q := range req.queries {
		ns, leaf, ok := strings.Cut(q, ":")
		if !ok || ns == "" {
			return c.optError(opt, repErrInvalid, fmt.Sprintf("meta context query %q has no namespace", q))
		}
		if ns == "base" && (leaf == "allocation" || leaf == "" && !set) {
			match = true
		}
	}
	if match {
		id := uint32(0) // reserved in LIST replies
		if set {
			id = metaContextBaseID
		}
		p := make([]byte, 4, 4+len(metaBaseAllocation))
		binary.BigEndian.PutUint32(p, id)
		p = append(p, metaBaseAllocation...)
		if err := c.optReply(opt, repMetaContext, p); err != nil {
			return err
		}
		if set {
			c.metaOK, c.metaExport = true, e.Name
		}
	}
	return c.optReply(opt, repAck, nil)
}
