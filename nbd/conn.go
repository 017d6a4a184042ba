package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"boardnbd/nbd/backend"
)

// readBufferSize is the per-connection buffer for request headers and small
// payloads: several pipelined 4 KiB writes fit in one read system call.
const readBufferSize = 16 << 10

// Requests may run on the reader while the connection's streak of storage
// calls served from memory is at least inlineStreak (see runInline). A fast
// call adds one, up to twice that; a slow one takes away half, so a rare
// slow call among fast ones does not end the streak, but storage that is
// mostly slow ends it at once.
const (
	inlineStreak = 16
	streakMax    = 2 * inlineStreak
	streakSlow   = inlineStreak
)

// calmWaits is how many waits for a request in a row must show depth 1
// before the reader sleeps in read(2) (see depthOne).
const calmWaits = 32

// writeRunMin is how many writes in a row make a stream of writes.
const writeRunMin = 4

// servedFromMemory says whether a storage call of n bytes that took d was
// served from memory (the page cache, tmpfs): under 60 µs, plus copying at
// 2 GB/s. That leaves room for a busy machine's slow system calls; an SSD
// takes longer (NVMe 80 µs or more for 4 KiB, a USB SSD more still), and its
// requests gain from running side by side on workers.
func servedFromMemory(d time.Duration, n int) bool {
	return d < 60*time.Microsecond+time.Duration(n/2)
}

// maxChunks bounds the content chunks of one structured read reply and the
// descriptors of one block status reply.
const (
	maxReadChunks  = 64
	maxDescriptors = 1 << 14
)

// minHoleRead is the smallest structured read worth asking the backend for
// holes: below it, finding them costs more system calls than sending the
// zeroes saves.
const minHoleRead = 64 << 10

// openConns counts the connections open in this process, in all servers.
var openConns atomic.Int32

var errDisconnect = errors.New("nbd: client disconnected with NBD_CMD_DISC")

// conn is one client connection. Its reader goroutine decodes requests and
// hands each to a parked worker for the backend I/O, or on fast storage runs
// it itself (runInline). Replies go through a queue: whichever goroutine
// finds nobody writing sends every queued reply in one vectored write, so
// the socket has a single writer at a time.
type conn struct {
	srv *Server
	// raw is the accepted connection; nc is what the protocol runs over:
	// raw, or a TLS connection over it after NBD_OPT_STARTTLS. Other
	// goroutines (Shutdown, Close) touch only raw.
	raw      net.Conn
	nc       net.Conn
	br       *bufio.Reader
	sock     *sockReader   // br's source while nc is a plain socket; else nil
	sw       *sockWriter   // writes replies while nc is a plain socket on Linux; else nil
	batch    int           // requests decoded since the reader last read the socket
	gap      time.Duration // the reader's last wait for a request
	bulk     bool          // the last request's payload was larger than the read buffer
	writeRun int           // writes in a row, up to writeRunMin
	calm     int           // waits in a row with no sign of depth (see depthOne)
	log      *slog.Logger
	optBuf   [512]byte
	begun    time.Time

	// smallRead and smallWrite say the last request was a read, or a
	// write, no larger than the read buffer; the reader's waits after such
	// requests may gather (gathers). unit is the bytes such a request takes
	// on the wire, what gathering waits count in. ahead is how many bytes
	// from the reader's position the last gathering read found had come:
	// reading a request within them cannot wait for the client, so the
	// replies the reader holds stay held (see transmit).
	smallRead  bool
	smallWrite bool
	unit       int
	ahead      int
	gathering  gatherState

	// Negotiated during the handshake.
	fixed      bool // the client set NBD_FLAG_C_FIXED_NEWSTYLE
	tls        bool // NBD_OPT_STARTTLS succeeded
	noZeroes   bool
	structured bool
	metaOK     bool   // base:allocation selected
	metaExport string // for the export named here

	// The export in transmission.
	exp          *Export
	be           backend.Backend
	size         uint64
	tflags       uint16
	minBlock     uint32
	maxBlock     uint32
	strictBlocks bool // the client asked for block sizes: enforce them
	canExtents   bool

	wmu       sync.Mutex // held while writing a handshake reply
	qmu       sync.Mutex // guards the reply queue below
	queue     []*slot    // replies waiting for the goroutine that is writing
	spare     []*slot
	writing   bool     // a goroutine is writing replies, or the reader holds them
	corked    bool     // the reader holds replies (see cork); only the reader uses it
	wiov      [][]byte // the writer's vectors, reused
	wnb       net.Buffers
	slots     chan *slot     // free request slots; bounds requests in flight
	inflight  sync.WaitGroup // requests handed on, until their handling ends
	nInflight atomic.Int32   // requests handed on whose replies are not yet queued (slot.counted)
	work      chan *slot     // hands requests to parked workers; nil asks one to exit
	parked    atomic.Int32   // workers waiting on work
	fast      atomic.Int32   // the streak of storage calls served from memory
	procs     int32          // GOMAXPROCS when the connection began
	requests  atomic.Uint64
	trimSeen  uint64 // requests at the last trim check (the trimmer's own)
	mem       budget
	dead      atomic.Bool
	pipes     pipePool // for spliced read replies

	bytesRead    atomic.Uint64 // read from the export, sent to the client
	bytesWritten atomic.Uint64 // received from the client, written
	ioErrors     atomic.Uint64
}

// slot holds one request in flight and the scratch space for its reply.
type slot struct {
	req  request
	buf  *[]byte // payload, from the pools
	held int64   // bytes charged to the connection's budget
	hdr  []byte  // reply headers, grown as needed and kept
	// inline says the reader runs the request because storage has been
	// answering from memory (runInline): reads use backend.ReadAtCached.
	inline bool
	iov    [][]byte
	ext    []backend.Extent
	cks    []chunk
	// A spliced read's reply: piped bytes of its data wait in pipe, to be
	// sent after iov[0], its header (see splice_linux.go).
	pipe  *pipe
	piped int
	// counted says the request is counted in nInflight: from when the
	// reader hands it on until its reply is queued (sendIOV).
	counted bool
}

// chunk is one content chunk of a structured read reply under construction.
type chunk struct {
	hdr        int // offset of its header in slot.hdr
	hdrLen     int
	start, end int64 // data range within the request, for data chunks
	data       bool
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{
		srv:   s,
		raw:   nc,
		nc:    nc,
		sock:  newSockReader(nc),
		sw:    newSockWriter(nc),
		gap:   hotWait,
		procs: int32(runtime.GOMAXPROCS(0)),
		begun: time.Now(),
		slots: make(chan *slot, s.maxInFlight()),
		work:  make(chan *slot),
	}
	if c.sock != nil {
		if c.sw != nil {
			c.sw.hide = c.sock.hide
			c.sw.sockBlocking = &c.sock.blocking
		}
		c.br = bufio.NewReaderSize(c.sock, readBufferSize)
	} else {
		c.br = bufio.NewReaderSize(nc, readBufferSize)
	}
	for range cap(c.slots) {
		c.slots <- nil // slots are allocated on first use
	}
	c.mem.init(2 * int64(s.maxPayload()))
	c.log = s.logger().With("remote", nc.RemoteAddr().String())
	return c
}

func (c *conn) serve() {
	defer c.srv.forget(c)
	defer c.raw.Close()
	defer c.sock.release()
	defer func() {
		if p := recover(); p != nil {
			c.log.Error("connection panicked; closing it", "panic", p, "stack", string(debug.Stack()))
		}
	}()

	c.raw.SetDeadline(time.Now().Add(c.srv.handshakeTimeout()))
	c.armShutdown()
	if err := c.handshake(); err != nil {
		if c.be != nil {
			c.be.Close()
		}
		c.logHandshakeEnd(err)
		return
	}
	c.raw.SetDeadline(time.Time{})
	c.armShutdown()
	c.log = c.log.With("export", c.exp.Name)
	c.log.Info("client connected", "size", c.size, "structured", c.structured,
		"readonly", c.tflags&flagReadOnly != 0, "tls", c.tls)

	err := c.transmit()
	c.inflight.Wait()
	c.stopWorkers()
	c.pipes.closeAll()
	c.be.Close()
	attrs := []any{"read", c.bytesRead.Load(), "written", c.bytesWritten.Load(),
		"duration", time.Since(c.begun).Round(time.Millisecond)}
	if n := c.ioErrors.Load(); n > 0 {
		attrs = append(attrs, "io_errors", n)
	}
	switch {
	case errors.Is(err, errDisconnect):
	case c.srv.shutting.Load():
		attrs = append(attrs, "reason", "server shutting down")
	case errors.Is(err, io.EOF):
		attrs = append(attrs, "reason", "client hung up without NBD_CMD_DISC")
	default:
		attrs = append(attrs, "reason", err.Error())
	}
	c.log.Info("client disconnected", attrs...)
}

func (c *conn) logHandshakeEnd(err error) {
	switch {
	case errors.Is(err, errAborted), errors.Is(err, io.EOF) && !c.dead.Load():
		c.log.Debug("handshake ended by client", "err", err)
	case c.srv.shutting.Load():
		c.log.Debug("handshake cut short by shutdown")
	case errors.Is(err, errTLSHandshake):
		c.log.Warn("TLS handshake failed; the client or this server refused the other's certificate (check the CA, the certificates' dates and names, and the client certificate)",
			"err", err)
	case errors.Is(err, os.ErrDeadlineExceeded):
		c.log.Info("handshake timed out; client too slow or not speaking NBD",
			"timeout", c.srv.handshakeTimeout())
	default:
		c.log.Info("handshake failed", "err", err)
	}
}

// armShutdown makes a read that is about to start end by the shutdown
// deadline, if the server is shutting down. Call it after any other change
// of the read deadline, so a concurrent Shutdown is never overridden.
func (c *conn) armShutdown() {
	if c.srv.shutting.Load() {
		c.raw.SetReadDeadline(time.Unix(0, c.srv.closeAt.Load()))
	}
}

// start installs the export chosen by NBD_OPT_GO or NBD_OPT_EXPORT_NAME.
func (c *conn) start(e *Export, b backend.Backend, strict bool) {
	c.exp, c.be = e, b
	c.size, c.tflags = exportShape(e, b, c.structured)
	info := b.Info()
	c.minBlock, _, c.maxBlock = c.blockSizes(info)
	c.strictBlocks = strict
	c.canExtents = info.CanExtents
}

// writeAll writes a message under the writer lock (handshake replies).
func (c *conn) writeAll(a, b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := c.nc.Write(a); err != nil {
		return err
	}
	if len(b) > 0 {
		if _, err := c.nc.Write(b); err != nil {
			return err
		}
	}
	return nil
}

// transmit is the reader loop of the transmission phase.
func (c *conn) transmit() error {
	var hdr [requestLen]byte
	idle := c.exp.IdleTimeout
	defer c.uncork()
	var waitFrom time.Time
	asked, came := 0, 0 // a gathering wait's requests, and the bytes it found
	for {
		// A request whose bytes a gathering read found there (ahead) is
		// read without a wait, whether or not they are in the buffer yet.
		waiting := c.br.Buffered() < requestLen && c.ahead < requestLen
		if waiting {
			if c.corked {
				c.uncork() // about to wait for the client: send what is held first
			}
			if c.sock != nil {
				// At depth 1, in a stream of bulk writes, and in one of
				// small writes the reader runs itself, the next request
				// is coming: the reader may sleep in read(2).
				one := c.depthOne()
				waitFrom = time.Now()
				if !one && c.gathers() {
					n, d := c.gathering.next(waitFrom, c.batch, c.requests.Load(), c.smallWrite)
					c.sock.gather, c.sock.gatherIn = max(n*c.unit-c.br.Buffered(), 0), d
					asked = n
					c.sock.gatherProbe = c.gathering.probing
					c.sock.gatherNap = c.gathering.nap // a probe waits on the mark all the same
				}
				small := c.sock.gatherIn == 0 && c.smallWrites()
				c.sock.lone = one || c.bulk || small
				c.sock.tryFirst = small && !one
			}
			c.batch = 0
		}
		c.batch++
		if idle > 0 {
			c.raw.SetReadDeadline(time.Now().Add(idle))
			c.armShutdown()
		}
		before := c.br.Buffered()
		n, err := io.ReadFull(c.br, hdr[:])
		if err != nil {
			if n == 0 && idle > 0 && errors.Is(err, os.ErrDeadlineExceeded) &&
				c.nInflight.Load() > 0 && !c.srv.shutting.Load() {
				continue // not idle: a request is still running
			}
			if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) && idle > 0 && !c.srv.shutting.Load() {
				return fmt.Errorf("idle for %v", idle)
			}
			return err
		}
		if waiting && c.sock != nil {
			if c.sock.gatherIn != 0 {
				came = before + c.sock.gathered
				c.ahead = came
				c.sock.gatherIn = 0
			}
			now := time.Now()
			c.gap = now.Sub(waitFrom)
			c.sock.tick(now)
		}
		req, err := decodeRequest(&hdr)
		if err != nil {
			return fmt.Errorf("%w in request header: protocol violation", err)
		}
		if req.typ == cmdDisc {
			return errDisconnect
		}
		c.ahead = max(c.ahead-requestLen, 0)
		c.bulk = req.typ == cmdWrite && req.length > readBufferSize
		c.smallRead = req.typ == cmdRead && req.length <= readBufferSize
		c.smallWrite = req.typ == cmdWrite && !c.bulk
		c.unit = requestLen
		if c.smallWrite {
			c.unit += int(req.length)
		}
		if asked > 0 {
			// The wait counted in requests like the last before it; what
			// came is counted in requests like the first that came.
			c.gathering.result(came >= asked*c.unit, came/c.unit)
			asked = 0
		}
		if req.typ == cmdWrite {
			c.writeRun = min(c.writeRun+1, writeRunMin)
		} else {
			c.writeRun = 0
		}
		if req.typ == cmdWrite && req.length > c.srv.maxPayload() {
			return fmt.Errorf("write payload of %d bytes is over the %d byte maximum: protocol violation",
				req.length, c.srv.maxPayload())
		}

		s := c.takeSlot()
		s.req, s.inline = req, false
		if req.typ == cmdWrite {
			if c.br.Buffered() < int(req.length) && c.ahead < int(req.length) {
				c.uncork() // the payload's rest may be a wait away
			}
			c.ahead = max(c.ahead-int(req.length), 0)
			c.hold(s, req.length)
			if c.sock != nil {
				c.sock.payload = int(req.length) - c.br.Buffered()
				c.sock.lag.begin(c.bulk && c.sock.canMark())
			}
			_, err := io.ReadFull(c.br, *s.buf)
			if c.sock != nil {
				c.sock.payload = 0
			}
			if err != nil {
				c.release(s)
				return err
			}
		}
		if errno, msg := c.check(&req); errno != 0 {
			c.replyError(s, errno, msg) // the writer releases s
			continue
		}
		if req.typ == cmdRead {
			c.hold(s, req.length)
		}
		c.inflight.Add(1)
		c.nInflight.Add(1)
		s.counted = true
		c.requests.Add(1)
		if c.runInline(&req) {
			c.cork()
			s.inline = true
			c.handle(s)
			continue
		}
		select {
		case c.work <- s:
		default:
			go c.worker(s) // the only allocation, and only as workers are added
		}
	}
}

// depthOne says whether the client sends one request at a time, so that the
// reader may sleep in read(2) for the next (see sockReader). It is called
// each time the reader has to read the socket for a request header.
//
// A client at depth 1 never has two requests in the buffer, never has one
// running while the reader waits, and answers each reply at once. One that
// keeps more in flight can look the same for a while when it is the slower
// side: it sends a request for each reply it takes, so each read of the
// socket brings one. Sleeping in read(2) then wakes the reader for every
// request, where the poller lets a few arrive first. So any sign of depth
// (two requests in one read, one running, a payload larger than the buffer)
// keeps the reader out of depth-1 mode for the next calmWaits waits as
// well. (Bulk writes have their own reason to sleep in read(2); see
// transmit.)
func (c *conn) depthOne() bool {
	if c.batch > 1 || c.bulk || c.nInflight.Load() != 0 {
		c.calm = 0
	} else if c.calm < calmWaits {
		c.calm++
	}
	return c.calm == calmWaits && c.gap < hotWait
}

// smallWrites says whether the client streams writes no larger than the read
// buffer that the reader runs itself (runInline), at any depth. The reader
// is then the slower side: each write costs it the payload's read and the
// storage write, the client only the send. So when it looks for the next
// request the bytes are usually there already, and when they are not they
// are microseconds away. Sleeping in read(2) for them is cheaper than
// parking on the poller, which costs a failed read, an epoll wait, and
// wake-ups of the runtime's threads; and a read that finds the bytes there is
// made first without sleeping (sockReader.tryFirst), as a raw system call
// the runtime does not see. Reads at depth stay on the poller: there the
// client is the slower side, the reader would sleep before nearly every
// request and answer each alone, and each of those replies costs the client
// a wake-up that batching on the poller saves.
//
// With 4 KiB writes at depth 32 on two shared cores this took fio from 222
// to 282 MiB/s and the server from 4.0 to 3.5 s of CPU per GiB.
//
// Writes at depth that a probe finds deep enough gather instead (gathers is
// asked first), where a trial finds that quicker (gatherTrial): where the
// reader is the quicker side after all, as against fio on a core of its
// own, it would otherwise read and answer them one at a time.
func (c *conn) smallWrites() bool {
	return c.writeRun >= writeRunMin && !c.bulk &&
		c.fast.Load() >= inlineStreak && c.nInflight.Load() == 0
}

// gathers says whether the reader, about to wait for the client, may wait
// for a batch of requests (gatherState): it has answered every request,
// runs them itself from memory, and the last was a small read or write.
// Only the reader calls it, before it chooses the socket's mode: a wait
// that gathers does so in poller mode.
func (c *conn) gathers() bool {
	return (c.smallRead || c.smallWrite) && c.nInflight.Load() == 0 &&
		c.fast.Load() >= inlineStreak && c.sock.canMark()
}

// runInline says whether the reader should run a request itself rather
// than hand it to a worker. A hand-off wakes another thread, and for storage
// that answers in microseconds (the page cache, tmpfs, a fast SSD) that
// wake-up is most of a request's cost. The reader runs only READ and WRITE,
// only when no worker is busy, and only while storage calls keep being
// served from memory (timeStorage), so storage that waits on a device (an
// SD card, a disk, an SSD) keeps its requests on workers running in
// parallel. A request that turns slow while inline holds back, that once,
// the requests behind it and the replies held before it.
//
// While the reader runs requests from its buffer it holds their replies
// (cork) and sends them together in one write, before it next waits for
// the client or for a slot or memory that held replies would free.
func (c *conn) runInline(r *request) bool {
	return (r.typ == cmdRead || r.typ == cmdWrite) &&
		c.fast.Load() >= inlineStreak &&
		c.nInflight.Load() == 1
}

// cork makes the reader the reply writer, so replies queue until uncork.
// Only the reader calls cork and uncork.
func (c *conn) cork() {
	if c.corked {
		return
	}
	c.qmu.Lock()
	if !c.writing {
		c.writing = true
		c.corked = true
	}
	c.qmu.Unlock()
}

// uncork sends every held reply.
func (c *conn) uncork() {
	if !c.corked {
		return
	}
	c.corked = false
	c.qmu.Lock()
	c.writeQueued()
	c.qmu.Unlock()
}

// takeSlot returns a free request slot, waiting for one if all are in use.
func (c *conn) takeSlot() *slot {
	var s *slot
	select {
	case s = <-c.slots:
	default:
		c.uncork() // held replies hold slots
		s = <-c.slots
	}
	if s == nil {
		s = new(slot)
	}
	return s
}

// hold charges n payload bytes to the connection and gives s a buffer.
func (c *conn) hold(s *slot, n uint32) {
	if c.corked && !c.mem.fits(int64(n)) {
		c.uncork() // held replies hold memory
	}
	c.mem.acquire(int64(n))
	s.held = int64(n)
	s.buf = getBuf(int(n))
}

// release returns a slot and its memory.
func (c *conn) release(s *slot) {
	if s.pipe != nil {
		// Sent, and so empty, unless the connection failed first.
		c.pipes.put(s.pipe, !c.dead.Load())
		s.pipe, s.piped = nil, 0
	}
	putBuf(s.buf)
	s.buf = nil
	c.mem.release(s.held)
	s.held = 0
	select {
	case c.slots <- s:
	default: // a spare made after a panic filled the channel
	}
}

// check validates a request against the negotiated state. It returns the
// NBD error to reply with, or 0 if the request may run.
func (c *conn) check(r *request) (uint32, string) {
	if c.srv.shutting.Load() {
		return errShutdown, "server is shutting down"
	}
	var allowed uint16
	if c.tflags&flagSendFUA != 0 {
		allowed |= cmdFlagFUA
	}
	write := false
	switch r.typ {
	case cmdRead:
		if c.tflags&flagSendDF != 0 {
			allowed |= cmdFlagDF
		}
	case cmdWrite, cmdTrim:
		write = true
	case cmdWriteZeroes:
		write = true
		allowed |= cmdFlagNoHole | cmdFlagFastZero
	case cmdFlush, cmdCache:
	case cmdBlockStatus:
		allowed |= cmdFlagReqOne
	default:
		return errInval, fmt.Sprintf("unknown command %d", r.typ)
	}
	if bad := r.flags &^ allowed; bad != 0 {
		return errInval, fmt.Sprintf("command flags %#x are not valid for command %d", bad, r.typ)
	}
	if write && c.tflags&flagReadOnly != 0 {
		return errPerm, "export is read-only"
	}
	switch {
	case r.typ == cmdFlush:
		if c.tflags&flagSendFlush == 0 {
			return errInval, "flush is not enabled on this export"
		}
		return 0, ""
	case r.typ == cmdTrim && c.tflags&flagSendTrim == 0:
		return errInval, "trim is not enabled on this export"
	case r.typ == cmdBlockStatus && !c.metaOK:
		return errInval, "no metadata context was negotiated"
	case r.typ == cmdBlockStatus && r.length == 0:
		return errInval, "block status of zero bytes"
	}
	end := r.offset + uint64(r.length)
	if end < r.offset || end > c.size {
		if r.typ == cmdWrite || r.typ == cmdWriteZeroes {
			return errNoSpc, fmt.Sprintf("request [%d, +%d) ends past the export size %d", r.offset, r.length, c.size)
		}
		return errInval, fmt.Sprintf("request [%d, +%d) ends past the export size %d", r.offset, r.length, c.size)
	}
	if r.typ == cmdRead && r.length > c.maxBlock {
		return errInval, fmt.Sprintf("read of %d bytes is over the %d byte maximum", r.length, c.maxBlock)
	}
	if c.strictBlocks && c.minBlock > 1 && r.typ != cmdBlockStatus &&
		(r.offset%uint64(c.minBlock) != 0 || r.length%c.minBlock != 0) {
		return errInval, fmt.Sprintf("request [%d, +%d) is not aligned to the %d byte block size", r.offset, r.length, c.minBlock)
	}
	return 0, ""
}

// worker runs requests: the one it was started with, then whatever the
// reader hands it while it is parked. A new goroutine per request would cost
// an allocation per request; parked workers cost none. An idle connection's
// parked workers are asked to exit by the server's trimmer, and all exit when
// the connection ends.
func (c *conn) worker(s *slot) {
	for s != nil {
		c.handle(s)
		c.parked.Add(1)
		s = <-c.work
		c.parked.Add(-1)
	}
}

// stopWorkers asks every parked worker to exit.
func (c *conn) stopWorkers() {
	for {
		select {
		case c.work <- nil:
		default:
			if c.parked.Load() == 0 {
				return
			}
			runtime.Gosched() // a worker between handle and parking
		}
	}
}

// trimIfIdle lets an idle connection's parked workers go. The server's
// trimmer calls it periodically; it is idle if it took no request since the
// previous call.
func (c *conn) trimIfIdle() {
	n := c.requests.Load()
	idle := n == c.trimSeen && c.nInflight.Load() == 0
	c.trimSeen = n
	for idle {
		select {
		case c.work <- nil:
		default:
			return
		}
	}
}

// handle runs one request on the backend and replies.
func (c *conn) handle(s *slot) {
	defer func() {
		if p := recover(); p != nil {
			c.log.Error("request panicked; closing the connection", "panic", p, "stack", string(debug.Stack()))
			c.fail(fmt.Errorf("panic: %v", p))
			// s may or may not have reached the reply queue; leave it
			// and give the reader a fresh slot in its place.
			select {
			case c.slots <- new(slot):
			default:
			}
		}
		// Otherwise s went to the reply queue, whose writer releases it,
		// and left nInflight there. (After a panic the count stays up;
		// the connection is closing.)
		c.inflight.Done()
	}()
	r := &s.req
	off, n := int64(r.offset), int64(r.length)
	var err error
	switch r.typ {
	case cmdRead:
		c.read(s)
		return
	case cmdBlockStatus:
		c.blockStatus(s)
		return
	case cmdWrite:
		err = c.writeAt(s, off)
		if err == nil {
			c.bytesWritten.Add(uint64(n))
		}
	case cmdFlush:
		err = c.be.Flush()
	case cmdTrim:
		err = c.be.Trim(off, n)
	case cmdWriteZeroes:
		var zf backend.ZeroFlags
		if r.flags&cmdFlagNoHole != 0 {
			zf |= backend.ZeroNoHole
		}
		if r.flags&cmdFlagFastZero != 0 {
			zf |= backend.ZeroFast
		}
		err = c.be.Zero(off, n, zf)
	case cmdCache:
		// A hint only; the kernel's page cache already does read-ahead.
	}
	if err == nil && r.flags&cmdFlagFUA != 0 && r.typ != cmdFlush && r.typ != cmdWrite {
		err = c.be.Flush()
	}
	if err != nil {
		c.replyError(s, c.errno(err, r), err.Error())
		return
	}
	s.hdr = grow(s.hdr, simpleReplyLen)
	putSimpleReply(s.hdr, 0, r.handle)
	c.send(s, s.hdr[:simpleReplyLen])
}

// writeAt writes s's payload to the backend at off.
func (c *conn) writeAt(s *slot, off int64) error {
	call := c.beginStorage(false, len(*s.buf))
	defer call.abandon()
	var err error
	if s.req.flags&cmdFlagFUA != 0 {
		// Durable on its own where the storage can: a journal
		// commit need not flush everything written before it.
		_, err = backend.WriteAtFUA(c.be, *s.buf, off)
	} else if s.inline {
		// Into the page cache, as a system call the runtime does
		// not see (backend.CachedWriter), as inline reads are.
		_, err = backend.WriteAtCached(c.be, *s.buf, off)
	} else {
		_, err = c.be.WriteAt(*s.buf, off)
	}
	c.timeStorage(&call, len(*s.buf))
	return err
}

// storageBusy counts the storage calls in progress in this process.
var storageBusy atomic.Int32

// sleepCheckMin is the smallest storage call whose thread's sleeps are
// counted (see timeStorage). Counting costs a system call before the call
// and, if the call was slow by its time, one after: about a per cent of a
// copy this large.
const sleepCheckMin = 128 << 10

// storageCall is a storage call being timed (see timeStorage).
type storageCall struct {
	start   time.Time
	crowded bool // more storage calls than processors when it began
	read    bool
	sleeps  int64 // the thread's sleeps when a large call began; -1 if not counted
	ended   bool  // timeStorage has counted it
}

// abandon ends a call that never reached timeStorage, because the storage
// panicked: it no longer counts in storageBusy, which every connection's
// reads are judged by, and the goroutine leaves its thread. Deferred by
// every caller of beginStorage.
func (call *storageCall) abandon() {
	if call.ended {
		return
	}
	storageBusy.Add(-1)
	if call.sleeps >= 0 {
		runtime.UnlockOSThread()
	}
}

// beginStorage starts timing a storage call of n bytes. For a large call it
// also counts the thread's sleeps so far, and keeps the goroutine on the
// thread until timeStorage (or abandon).
func (c *conn) beginStorage(read bool, n int) storageCall {
	k := storageBusy.Add(1)
	call := storageCall{crowded: k > c.procs, read: read, sleeps: -1}
	if n >= sleepCheckMin {
		runtime.LockOSThread()
		if call.sleeps = threadSleeps(); call.sleeps < 0 {
			runtime.UnlockOSThread()
		}
	}
	call.start = time.Now()
	return call
}

// timeStorage adds a storage call of n bytes to the streak that lets the
// reader run requests inline.
//
// A read that began or ended with more storage calls in progress than
// processors (crowded) shares a processor with others, and its time
// includes their turns: on a one-core board, eight workers reading 1 MiB
// each from the page cache each take eight times as long, look slow, and
// keep the connection on workers for good. So a crowded read counts as
// served from memory, whatever it took, if the process read nothing from a
// device meanwhile (noBlockInputSince). Writes are not judged so: writing
// to the page cache can sleep on writeback without reading anything.
//
// A large call (sleepCheckMin) is slow only if its thread slept in it. One
// that never slept was served from memory however long it took: the
// kernel stopped the thread for other work or for a CPU quota (systemd's
// CPUQuota=, a container's limit), or the core copies slowly. By time
// alone, under a quota of 0.3 of a core, one 256 KiB write in 40 to 50
// was stopped halfway and judged slow, and up to a fifth of a copy's
// writes went to workers.
func (c *conn) timeStorage(call *storageCall, n int) {
	call.ended = true
	d := time.Since(call.start)
	fast := servedFromMemory(d, n)
	if call.sleeps >= 0 {
		// Counted again only when the time says slow: a copy's calls
		// nearly all end fast, and each count is a system call.
		if !fast {
			fast = threadSleeps() == call.sleeps
		}
		runtime.UnlockOSThread()
	}
	crowded := call.crowded || storageBusy.Load() > c.procs
	storageBusy.Add(-1)
	if !fast && crowded && call.read {
		fast = noBlockInputSince(call.start)
	}
	f := c.fast.Load()
	if fast {
		f = min(f+1, streakMax)
	} else {
		f = max(f-streakSlow, 0)
	}
	c.fast.Store(f) // racing workers may lose a step; it is a heuristic
}

// inblockSeen is the process's block input count as last read, and since
// when it has had that value, as far as anyone looked.
var inblockSeen countSeen

// noBlockInputSince says whether the process has read nothing from a device
// (its block input count, which a page-cache hit leaves alone) since start.
// The count is read only here, at the end of a slow crowded read, and
// compared with the value it has had since an earlier look: with storage
// in memory it never moves, and no request pays a system call to read it
// first. The first such read after the count moves is judged slow.
func noBlockInputSince(start time.Time) bool {
	n := blockInput()
	if n < 0 {
		return false
	}
	return inblockSeen.unchangedSince(n, time.Now(), start)
}

// countSeen follows a count that only grows, from looks at it.
type countSeen struct {
	mu    sync.Mutex
	n     int64
	since time.Time // the first look that saw n
}

// unchangedSince records a look that saw n at now (or before it), and says
// whether the count has been n since start or earlier.
func (c *countSeen) unchangedSince(n int64, now, start time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.since.IsZero() || n != c.n {
		c.n, c.since = n, now
		return false
	}
	return !c.since.After(start)
}

// errno maps a backend error to an NBD error value and logs the first one of
// the connection.
func (c *conn) errno(err error, r *request) uint32 {
	e := errnoOf(err)
	if e != errNotSup && c.ioErrors.Add(1) == 1 {
		c.log.Warn("storage error; replying with an error and serving on (later ones are counted at disconnect)",
			"command", r.typ, "offset", r.offset, "length", r.length, "err", err)
	}
	return e
}

// errnoOf maps a storage error to the NBD error the spec asks for.
func errnoOf(err error) uint32 {
	switch {
	case errors.Is(err, backend.ErrNotSupported), errors.Is(err, syscall.EOPNOTSUPP):
		return errNotSup
	case errors.Is(err, backend.ErrReadOnly), errors.Is(err, syscall.EPERM),
		errors.Is(err, syscall.EROFS), errors.Is(err, syscall.EACCES):
		return errPerm
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return errNoSpc
	case errors.Is(err, syscall.EINVAL):
		return errInval
	default:
		return errIO
	}
}

// read answers NBD_CMD_READ.
func (c *conn) read(s *slot) {
	r := &s.req
	buf := *s.buf
	off := int64(r.offset)
	if !c.structured {
		if err := c.readData(s, buf, off, true); err != nil {
			c.replyError(s, c.errno(err, r), err.Error())
			return
		}
		s.hdr = grow(s.hdr, simpleReplyLen)
		putSimpleReply(s.hdr, 0, r.handle)
		c.send(s, s.hdr[:simpleReplyLen], buf[s.piped:])
		return
	}
	if len(buf) == 0 {
		s.hdr = grow(s.hdr, structReplyLen)
		putStructReply(s.hdr, replyFlagDone, replyTypeNone, r.handle, 0)
		c.send(s, s.hdr[:structReplyLen])
		return
	}
	s.cks = s.cks[:0]
	if c.canExtents && r.flags&cmdFlagDF == 0 && len(buf) >= minHoleRead {
		c.planChunks(s)
	}
	if len(s.cks) <= 1 {
		// One data chunk for the whole range.
		s.cks = append(s.cks[:0], chunk{start: 0, end: int64(len(buf)), data: true})
	}
	hsize := 0
	for i := range s.cks {
		s.cks[i].hdr = hsize
		if s.cks[i].data {
			s.cks[i].hdrLen = structReplyLen + 8
		} else {
			s.cks[i].hdrLen = structReplyLen + 12
		}
		hsize += s.cks[i].hdrLen
	}
	s.hdr = grow(s.hdr, hsize)
	s.iov = s.iov[:0]
	for i, ck := range s.cks {
		h := s.hdr[ck.hdr : ck.hdr+ck.hdrLen]
		var flags uint16
		if i == len(s.cks)-1 {
			flags = replyFlagDone
		}
		if ck.data {
			data := buf[ck.start:ck.end]
			if err := c.readData(s, data, off+ck.start, len(s.cks) == 1); err != nil {
				c.replyError(s, c.errno(err, r), err.Error())
				return
			}
			putStructReply(h, flags, replyTypeOffsetData, r.handle, uint32(8+ck.end-ck.start))
			binary.BigEndian.PutUint64(h[20:28], uint64(off+ck.start))
			s.iov = append(s.iov, h, data[s.piped:])
		} else {
			putStructReply(h, flags, replyTypeOffsetHole, r.handle, 12)
			binary.BigEndian.PutUint64(h[20:28], uint64(off+ck.start))
			binary.BigEndian.PutUint32(h[28:32], uint32(ck.end-ck.start))
			s.iov = append(s.iov, h)
		}
	}
	c.sendIOV(s)
}

// planChunks splits a structured read into data and hole chunks by the
// backend's extents. It leaves s.cks with at most one chunk when the whole
// range is data or the extents cannot be had.
func (c *conn) planChunks(s *slot) {
	r := &s.req
	n := int64(r.length)
	ext, err := c.be.Extents(s.ext[:0], int64(r.offset), n)
	s.ext = ext[:0]
	if err != nil {
		return
	}
	var pos int64
	for _, e := range ext {
		if pos >= n || len(s.cks) == maxReadChunks-1 {
			break
		}
		end := min(pos+e.Length, n)
		if e.Length <= 0 {
			break
		}
		data := e.Flags&backend.ExtentZero == 0
		if k := len(s.cks); k > 0 && s.cks[k-1].data == data {
			s.cks[k-1].end = end
		} else {
			s.cks = append(s.cks, chunk{start: pos, end: end, data: data})
		}
		pos = end
	}
	if pos < n {
		if k := len(s.cks); k > 0 && s.cks[k-1].data {
			s.cks[k-1].end = n
		} else {
			s.cks = append(s.cks, chunk{start: pos, end: n, data: true})
		}
	}
	if len(s.cks) == 1 && !s.cks[0].data {
		return // all hole: one hole chunk is right
	}
	if len(s.cks) == 1 {
		s.cks = s.cks[:0]
	}
}

// spliceMin is the smallest read whose reply is spliced (splice_linux.go).
// A spliced reply takes three system calls of its own (the splice into the
// pipe, the header's send, the splice into the socket), where replies read
// with pread share vectored sends; and a client over loopback receives its
// pages one by one. For 64 and 128 KiB reads at depth 8, measured with fio,
// the server's CPU per GiB was no lower spliced, and at 64 KiB higher.
const spliceMin = 256 << 10

// readData fills buf from the backend for s, as readAt does. A large read,
// when alone in its reply (splice), it moves into a pipe instead, as far as
// the pipe holds and the storage can splice (an overlay over storage that
// cannot stops early), and only the rest into buf: s.piped bytes, sent
// from s.pipe after the reply's first vector.
func (c *conn) readData(s *slot, buf []byte, off int64, splice bool) error {
	if !splice || len(buf) < spliceMin || c.sw == nil {
		return c.readAt(s, buf, off)
	}
	p := c.pipes.get(len(buf))
	if p == nil {
		return c.readAt(s, buf, off)
	}
	// Timed as a copy of n bytes would be, but without counting the
	// thread's sleeps: a splice copies nothing and is over in a few
	// microseconds, too soon for a CPU quota to stop it in the middle.
	call := c.beginStorage(true, 0)
	defer call.abandon()
	n, err := backend.ReadToPipe(c.be, p.w, off, len(buf), s.inline)
	c.timeStorage(&call, n)
	if errors.Is(err, backend.ErrNotSupported) {
		c.pipes.disable()
		c.pipes.put(p, true)
		return c.readAt(s, buf, off)
	}
	if err == nil && n < len(buf) {
		err = c.readAt(s, buf[n:], off+int64(n))
	}
	if err != nil {
		c.pipes.put(p, false) // it may hold some of the bytes
		return err
	}
	c.bytesRead.Add(uint64(n))
	s.pipe, s.piped = p, n
	return nil
}

// readAt fills buf from the backend for s; a short read is an I/O error.
func (c *conn) readAt(s *slot, buf []byte, off int64) error {
	call := c.beginStorage(true, len(buf))
	defer call.abandon()
	var n int
	var err error
	if s.inline {
		n, err = backend.ReadAtCached(c.be, buf, off)
	} else {
		n, err = c.be.ReadAt(buf, off)
	}
	c.timeStorage(&call, len(buf))
	if n == len(buf) {
		c.bytesRead.Add(uint64(n))
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// blockStatus answers NBD_CMD_BLOCK_STATUS for base:allocation.
func (c *conn) blockStatus(s *slot) {
	r := &s.req
	n := int64(r.length)
	ext := append(s.ext[:0], backend.Extent{Length: n})
	if c.canExtents {
		var err error
		ext, err = c.be.Extents(s.ext[:0], int64(r.offset), n)
		if err != nil {
			s.ext = ext[:0]
			c.replyError(s, c.errno(err, r), err.Error())
			return
		}
	}
	s.ext = ext[:0]
	// Clip to the request, merge equal neighbours, bound the count.
	out := ext[:0]
	var pos int64
	for _, e := range ext {
		if pos >= n || e.Length <= 0 || len(out) == maxDescriptors {
			break
		}
		e.Length = min(e.Length, n-pos)
		if k := len(out); k > 0 && out[k-1].Flags == e.Flags {
			out[k-1].Length += e.Length
		} else {
			out = append(out, e)
		}
		pos += e.Length
		if r.flags&cmdFlagReqOne != 0 {
			break
		}
	}
	if len(out) == 0 {
		out = append(out, backend.Extent{Length: n})
	}
	if r.flags&cmdFlagReqOne != 0 {
		out = out[:1]
	}
	size := structReplyLen + 4 + 8*len(out)
	s.hdr = grow(s.hdr, size)
	h := s.hdr[:size]
	putStructReply(h, replyFlagDone, replyTypeBlockStatus, r.handle, uint32(size-structReplyLen))
	binary.BigEndian.PutUint32(h[20:24], metaContextBaseID)
	p := h[24:]
	for _, e := range out {
		var st uint32
		if e.Flags&backend.ExtentHole != 0 {
			st |= stateHole
		}
		if e.Flags&backend.ExtentZero != 0 {
			st |= stateZero
		}
		binary.BigEndian.PutUint32(p[0:4], uint32(e.Length))
		binary.BigEndian.PutUint32(p[4:8], st)
		p = p[8:]
	}
	c.send(s, h)
}

// replyError sends an error reply: a simple reply, or with structured
// replies an error chunk carrying msg.
func (c *conn) replyError(s *slot, errno uint32, msg string) {
	r := &s.req
	if !c.structured {
		s.hdr = grow(s.hdr, simpleReplyLen)
		putSimpleReply(s.hdr, errno, r.handle)
		c.send(s, s.hdr[:simpleReplyLen])
		return
	}
	if len(msg) > maxStringLen {
		msg = msg[:maxStringLen]
	}
	size := structReplyLen + 6 + len(msg)
	s.hdr = grow(s.hdr, size)
	h := s.hdr[:size]
	putStructReply(h, replyFlagDone, replyTypeError, r.handle, uint32(size-structReplyLen))
	binary.BigEndian.PutUint32(h[20:24], errno)
	binary.BigEndian.PutUint16(h[24:26], uint16(len(msg)))
	copy(h[26:], msg)
	c.send(s, h)
}

// send writes one whole reply made of bufs.
func (c *conn) send(s *slot, bufs ...[]byte) {
	s.iov = append(s.iov[:0], bufs...)
	c.sendIOV(s)
}

// sendIOV queues the reply in s.iov and hands s over: whichever goroutine
// is writing replies sends it, with every other queued reply, in one
// vectored write, then releases the slots. At depth the replies of many
// requests share one system call; alone, a reply is written at once by its
// own goroutine.
//
// The request stops counting in nInflight here, before its reply is
// written: a client at depth 1 answers a reply at once, and its next
// request must not find this one still counted, or it goes to a worker
// too (runInline). On a busy machine the worker that wrote a reply was
// often still on its way out when the next request came, and a client at
// depth 1 stayed on workers for good.
func (c *conn) sendIOV(s *slot) {
	if s.counted {
		s.counted = false
		c.nInflight.Add(-1)
	}
	c.qmu.Lock()
	c.queue = append(c.queue, s)
	if c.writing {
		c.qmu.Unlock()
		return
	}
	c.writing = true
	c.writeQueued()
	c.qmu.Unlock()
}

// writeQueued writes queued replies until none is left, then gives up the
// writer's role. It is called with qmu held, by the writer.
func (c *conn) writeQueued() {
	for len(c.queue) > 0 {
		batch := c.queue
		c.queue = c.spare[:0]
		c.qmu.Unlock()
		c.wiov = c.wiov[:0]
		var err error
		for i, b := range batch {
			if b.pipe == nil {
				c.wiov = append(c.wiov, b.iov...)
				continue
			}
			// A spliced reply: what is queued before it and its
			// header, then its pipe's bytes, then the rest.
			c.wiov = append(c.wiov, b.iov[0])
			if err == nil {
				more := i < len(batch)-1
				for _, v := range b.iov[1:] {
					more = more || len(v) > 0
				}
				err = c.sw.writeSpliced(c.wiov, b.pipe.r, b.piped, more)
			}
			c.wiov = append(c.wiov[:0], b.iov[1:]...)
		}
		switch {
		case err != nil, len(c.wiov) == 0:
		case c.sw != nil:
			err = c.sw.writev(c.wiov)
		default:
			c.wnb = c.wiov
			_, err = c.wnb.WriteTo(c.nc)
		}
		if err != nil {
			c.fail(err)
		}
		for i, b := range batch {
			c.release(b)
			batch[i] = nil
		}
		c.qmu.Lock()
		c.spare = batch[:0]
	}
	c.writing = false
}

// fail closes the connection after an unrecoverable error; the reader loop
// then ends.
func (c *conn) fail(err error) {
	if !c.dead.Swap(true) {
		c.log.Debug("closing connection", "err", err)
		c.raw.Close()
	}
}

// grow returns b with length at least n, reusing its storage when it can.
func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n, max(n, 64))
	}
	return b[:n]
}
