//go:build linux

package main

// Helpers of interop_test.go: build the real binary once, run it as a
// server on a loopback port, run real NBD clients against it with time
// limits, make test images, and speak just enough raw NBD to check the
// handshake byte by byte.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// interop holds what the interop tests share: the directory TestMain
// makes for the binary, and the results of finding tools once.
var interop struct {
	dir string

	buildOnce sync.Once
	bin       string
	buildErr  error

	pyOnce sync.Once
	python string
	pyErr  error
}

// TestMain gives the binary built by boardnbdBinary a directory that
// outlives every test and is removed after the last.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "boardnbd-interop-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	interop.dir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// boardnbdBinary builds the boardnbd command of this directory, once per
// test run, the way users get it (CGO_ENABLED=0), and returns its path.
func boardnbdBinary(t *testing.T) string {
	t.Helper()
	interop.buildOnce.Do(func() {
		bin := filepath.Join(interop.dir, "boardnbd")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-buildvcs=false", "-o", bin, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			interop.buildErr = fmt.Errorf("go build ./cmd/boardnbd: %v\n%s", err, out)
			return
		}
		interop.bin = bin
	})
	if interop.buildErr != nil {
		t.Fatal(interop.buildErr)
	}
	return interop.bin
}

// inCI reports whether the tests run in CI, where every client must be
// installed (.ci/deps does it) and a missing one is a failure.
func inCI() bool { return os.Getenv("CI") != "" }

// missingTool fails the test in CI and skips it elsewhere.
func missingTool(t *testing.T, what, pkg string) {
	t.Helper()
	if inCI() {
		t.Fatalf("CI must have %s: install it (apt-get install %s; make deps does)", what, pkg)
	}
	t.Skipf("%s is not installed (apt-get install %s, or make deps); skipping", what, pkg)
}

// debianPackage names the package of each client the tests run.
var debianPackage = map[string]string{
	"nbdinfo":  "libnbd-bin",
	"nbdcopy":  "libnbd-bin",
	"qemu-img": "qemu-utils",
	"qemu-io":  "qemu-utils",
	"fio":      "fio",
}

// requireTool returns the path of a client program, or ends the test as
// missingTool says.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		missingTool(t, name, debianPackage[name])
	}
	return p
}

// requireFioNBD returns fio's path if its nbd engine loads.
func requireFioNBD(t *testing.T) string {
	t.Helper()
	fio := requireTool(t, "fio")
	if r := runTool(t, 30*time.Second, fio, "--enghelp=nbd"); r.code != 0 {
		missingTool(t, "fio with the nbd ioengine", "fio")
	}
	return fio
}

// requireLibnbdPython returns a python3 that can import libnbd's nbd
// module. nbdsh runs whatever python3 comes first in PATH, which may be
// one (pyenv, a venv) without the Debian module, so the candidates are
// tried in turn, the system one first.
func requireLibnbdPython(t *testing.T) string {
	t.Helper()
	interop.pyOnce.Do(func() {
		cands := []string{"/usr/bin/python3"}
		if p, err := exec.LookPath("python3"); err == nil {
			cands = append(cands, p)
		}
		for _, p := range cands {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := exec.CommandContext(ctx, p, "-I", "-c", "import nbd").Run()
			cancel()
			if err == nil {
				interop.python = p
				return
			}
			interop.pyErr = errors.Join(interop.pyErr, fmt.Errorf("%s: %v", p, err))
		}
	})
	if interop.python == "" {
		t.Logf("no python3 with libnbd: %v", interop.pyErr)
		missingTool(t, "python3 with libnbd (nbdsh)", "python3-libnbd")
	}
	return interop.python
}

// toolResult is what a finished client printed and how it exited.
type toolResult struct {
	stdout, stderr string
	code           int
}

func (r toolResult) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// runTool runs a program to completion within timeout. A program that
// cannot start or does not finish in time fails the test; its exit code
// is for the caller to judge.
func runTool(t *testing.T, timeout time.Duration, name string, args ...string) toolResult {
	t.Helper()
	return runToolInput(t, timeout, nil, name, args...)
}

// runToolInput is runTool with stdin.
func runToolInput(t *testing.T, timeout time.Duration, stdin []byte, name string, args ...string) toolResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	r := toolResult{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("%s %s: no answer after %v (killed)\n%s", name, strings.Join(args, " "), timeout, r)
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%s: %v", name, err)
	}
	t.Logf("%s %s: exit %d in %v", filepath.Base(name), strings.Join(args, " "), r.code, time.Since(start).Round(time.Millisecond))
	return r
}

// runPython runs one of the testdata scripts with libnbd's python. The
// job is its stdin as JSON; its stdout, JSON too, is decoded into out.
func runPython(t *testing.T, script string, job, out any) {
	t.Helper()
	py := requireLibnbdPython(t)
	in, err := json.Marshal(job)
	if err != nil {
		t.Fatal(err)
	}
	r := runToolInput(t, 60*time.Second, in, py, "-I", filepath.Join("testdata", script))
	if r.code != 0 {
		t.Fatalf("%s failed:\n%s", script, r)
	}
	if err := json.Unmarshal([]byte(r.stdout), out); err != nil {
		t.Fatalf("%s printed no JSON result: %v\n%s", script, err, r)
	}
}

// exportSpec is one entry of the exports: list of a test config.
type exportSpec struct {
	Name, Path, Description string
	ReadOnly                bool
	Offset, Size            int64
	Allow                   []string // CIDR prefixes
}

// configYAML renders a config that listens on addr (none if empty) with
// discovery off.
func configYAML(addr string, exports ...exportSpec) string {
	var b strings.Builder
	b.WriteString("version: 1\n")
	if addr != "" {
		fmt.Fprintf(&b, "listen: [%q]\n", addr)
	}
	b.WriteString("discovery: {enabled: false}\nexports:\n")
	for _, e := range exports {
		fmt.Fprintf(&b, "  - name: %q\n    path: %q\n", e.Name, e.Path)
		if e.Description != "" {
			fmt.Fprintf(&b, "    description: %q\n", e.Description)
		}
		if e.ReadOnly {
			b.WriteString("    readonly: true\n")
		}
		if e.Offset != 0 {
			fmt.Fprintf(&b, "    offset: %d\n", e.Offset)
		}
		if e.Size != 0 {
			fmt.Fprintf(&b, "    size: %d\n", e.Size)
		}
		if len(e.Allow) > 0 {
			fmt.Fprintf(&b, "    allow: [%q]\n", strings.Join(e.Allow, `", "`))
		}
	}
	return b.String()
}

// writeConfig writes a config file into a fresh temporary directory.
func writeConfig(t *testing.T, addr string, exports ...exportSpec) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "boardnbd.yaml")
	if err := os.WriteFile(p, []byte(configYAML(addr, exports...)), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// serverProc is the real binary serving on a loopback port.
type serverProc struct {
	addr string // 127.0.0.1:port
	cmd  *exec.Cmd
	log  *lineLog

	exited  chan struct{} // closed when the process is gone
	waitErr error         // its exit status, once exited is closed
}

// uri returns the NBD URI of an export.
func (s *serverProc) uri(name string) string { return "nbd://" + s.addr + "/" + name }

// startServer runs "boardnbd serve -c FILE" with the given exports on a
// free loopback port and returns once it logs that it is listening. The
// test's cleanup sends SIGTERM and checks that it drains and exits 0.
func startServer(t *testing.T, exports ...exportSpec) *serverProc {
	t.Helper()
	bin := boardnbdBinary(t)
	// A port picked by listening on :0 and closing can be taken by
	// someone else before the server binds it; try a few.
	for try := 1; ; try++ {
		addr := freeAddr(t)
		s := launchServer(t, bin, addr, writeConfig(t, addr, exports...))
		if s.waitReady(30 * time.Second) {
			t.Cleanup(func() { s.stop(t) })
			return s
		}
		s.kill()
		if try < 3 && s.log.contains("address already in use") {
			continue
		}
		t.Fatalf("boardnbd did not start listening on %s (%v); its log:\n%s", addr, s.waitErr, s.log)
	}
}

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func launchServer(t *testing.T, bin, addr, cfg string) *serverProc {
	t.Helper()
	s := &serverProc{addr: addr, log: newLineLog(), exited: make(chan struct{})}
	s.cmd = exec.Command(bin, "serve", "-c", cfg)
	s.cmd.Stderr = s.log
	s.cmd.Stdout = s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		s.log.close()
		close(s.exited)
	}()
	return s
}

// waitReady waits for the "listening" line, and reports false if the
// server exited or did not say it in time.
func (s *serverProc) waitReady(timeout time.Duration) bool {
	return s.log.waitFor("msg=listening", timeout) && !s.done()
}

func (s *serverProc) done() bool {
	select {
	case <-s.exited:
		return true
	default:
		return false
	}
}

func (s *serverProc) kill() {
	s.cmd.Process.Kill()
	<-s.exited
}

// terminate sends SIGTERM, as systemd does to stop the service.
func (s *serverProc) terminate(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil && !s.done() {
		t.Fatalf("SIGTERM: %v", err)
	}
}

// wait waits for the process to exit and returns its exit code, or fails
// the test if it does not exit in time. Draining may take up to the
// server's drain timeout (30s) when a client holds a request.
func (s *serverProc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-s.exited:
	case <-time.After(timeout):
		s.kill()
		t.Errorf("boardnbd did not exit within %v of SIGTERM; killed it. Its log:\n%s", timeout, s.log)
		return -1
	}
	var ee *exec.ExitError
	if errors.As(s.waitErr, &ee) {
		return ee.ExitCode()
	}
	if s.waitErr != nil {
		return -1
	}
	return 0
}

// stop is the test cleanup: SIGTERM unless the test did it already, exit
// status 0, no panic in the log; the log is shown if anything failed.
func (s *serverProc) stop(t *testing.T) {
	t.Helper()
	if !s.done() {
		s.cmd.Process.Signal(syscall.SIGTERM)
	}
	if code := s.wait(t, 45*time.Second); code != 0 {
		t.Errorf("boardnbd exited with status %d after SIGTERM (%v), want 0", code, s.waitErr)
	}
	if s.log.contains("panicked") || s.log.contains("panic:") {
		t.Errorf("boardnbd logged a panic")
	}
	if t.Failed() {
		t.Logf("boardnbd log:\n%s", s.log)
	}
}

// lineLog collects a process's output by lines and lets tests wait for a
// line, without polling.
type lineLog struct {
	mu      sync.Mutex
	lines   []string
	partial []byte
	changed chan struct{} // closed and replaced on every new line
	closed  bool
}

func newLineLog() *lineLog { return &lineLog{changed: make(chan struct{})} }

// Write implements io.Writer; exec copies the process's output here.
func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	added := false
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, string(l.partial[:i]))
		l.partial = l.partial[i+1:]
		added = true
	}
	if added {
		close(l.changed)
		l.changed = make(chan struct{})
	}
	return len(p), nil
}

// close marks the end of the output: waiters stop waiting.
func (l *lineLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.partial) > 0 {
		l.lines = append(l.lines, string(l.partial))
		l.partial = nil
	}
	l.closed = true
	close(l.changed)
	l.changed = make(chan struct{})
}

// waitFor waits until a line contains substr, the output ends, or the
// timeout passes. It reports whether the line came.
func (l *lineLog) waitFor(substr string, timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		l.mu.Lock()
		for _, line := range l.lines {
			if strings.Contains(line, substr) {
				l.mu.Unlock()
				return true
			}
		}
		closed, changed := l.closed, l.changed
		l.mu.Unlock()
		if closed {
			return false
		}
		select {
		case <-changed:
		case <-timer.C:
			return false
		}
	}
}

func (l *lineLog) contains(substr string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, substr) {
			return true
		}
	}
	return false
}

func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n") + string(l.partial)
}

// imageDir returns a directory for big images: on /dev/shm when it has
// room for need bytes twice over (memory is faster than the disk and is
// freed at cleanup), else the test's temporary directory.
func imageDir(t *testing.T, need int64) string {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs("/dev/shm", &st); err == nil && int64(st.Bavail)*int64(st.Bsize) >= 2*need {
		if d, err := os.MkdirTemp("/dev/shm", "boardnbd-interop-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(d) })
			return d
		}
	}
	return t.TempDir()
}

// writeRandomImage writes size bytes from a ChaCha8 stream seeded with
// seed (fast, and the same on every run) and returns their SHA-256.
func writeRandomImage(t *testing.T, path string, size int64, seed uint64) [32]byte {
	t.Helper()
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	rng := rand.NewChaCha8(key)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for left := size; left > 0; {
		b := buf[:min(int64(len(buf)), left)]
		rng.Read(b)
		h.Write(b)
		if _, err := f.Write(b); err != nil {
			t.Fatal(err)
		}
		left -= int64(len(b))
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

// fileHex is fileSHA256 in hex.
func fileHex(t *testing.T, path string) string {
	t.Helper()
	sum := fileSHA256(t, path)
	return hex.EncodeToString(sum[:])
}

// fileSHA256 hashes a whole file.
func fileSHA256(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

// makeSparse creates a sparse file of size bytes that holds data (0x5a)
// only in the given ranges, which should be aligned to the file system's
// block size (64 KiB is safe) so that holes are exactly the rest.
func makeSparse(t *testing.T, path string, size int64, data ...[2]int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, r := range data {
		if _, err := f.WriteAt(bytes.Repeat([]byte{0x5a}, int(r[1])), r[0]); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// makeZeroImage creates a sparse file of zeroes.
func makeZeroImage(t *testing.T, path string, size int64) {
	t.Helper()
	makeSparse(t, path, size)
}

// rawClient speaks NBD over any connection; every read and write has a
// deadline when the connection supports one, and any failure ends the
// test.
type rawClient struct {
	t *testing.T
	r io.Reader
	w io.Writer
	d interface{ SetDeadline(time.Time) error }
}

func newRawClient(t *testing.T, r io.Reader, w io.Writer) *rawClient {
	c := &rawClient{t: t, r: r, w: w}
	if d, ok := r.(interface{ SetDeadline(time.Time) error }); ok {
		c.d = d
	}
	return c
}

func (c *rawClient) arm() {
	if c.d != nil {
		c.d.SetDeadline(time.Now().Add(10 * time.Second))
	}
}

func (c *rawClient) read(n int, what string) []byte {
	c.t.Helper()
	c.arm()
	b := make([]byte, n)
	if _, err := io.ReadFull(c.r, b); err != nil {
		c.t.Fatalf("reading %s (%d bytes): %v", what, n, err)
	}
	return b
}

func (c *rawClient) write(b []byte, what string) {
	c.t.Helper()
	c.arm()
	if _, err := c.w.Write(b); err != nil {
		c.t.Fatalf("sending %s: %v", what, err)
	}
}

// greeting reads the newstyle greeting and returns the handshake flags.
func (c *rawClient) greeting() uint16 {
	c.t.Helper()
	g := c.read(18, "greeting")
	if m := binary.BigEndian.Uint64(g[0:8]); m != specMagicInit {
		c.t.Fatalf("greeting magic = %#x, want NBDMAGIC %#x", m, specMagicInit)
	}
	if m := binary.BigEndian.Uint64(g[8:16]); m != specMagicOpt {
		c.t.Fatalf("greeting second magic = %#x, want IHAVEOPT %#x (newstyle)", m, specMagicOpt)
	}
	return binary.BigEndian.Uint16(g[16:18])
}

func (c *rawClient) clientFlags(f uint32) {
	c.t.Helper()
	c.write(binary.BigEndian.AppendUint32(nil, f), "client flags")
}

func (c *rawClient) option(opt uint32, data []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, specMagicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.write(append(b, data...), fmt.Sprintf("option %d", opt))
}

func (c *rawClient) request(flags, typ uint16, handle, off uint64, length uint32, payload []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint32(nil, specMagicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	c.write(append(b, payload...), fmt.Sprintf("request type %d", typ))
}

// simpleReply reads a simple reply header and checks its handle.
func (c *rawClient) simpleReply(handle uint64) (errno uint32) {
	c.t.Helper()
	h := c.read(16, "simple reply")
	if m := binary.BigEndian.Uint32(h[0:4]); m != specMagicSimple {
		c.t.Fatalf("reply magic = %#x, want NBD_SIMPLE_REPLY_MAGIC %#x (no structured replies were negotiated)", m, specMagicSimple)
	}
	if got := binary.BigEndian.Uint64(h[8:16]); got != handle {
		c.t.Fatalf("reply handle = %#x, want %#x", got, handle)
	}
	return binary.BigEndian.Uint32(h[4:8])
}

// exportName sends NBD_OPT_EXPORT_NAME and reads the reply: size,
// transmission flags, and the 124 reserved zero bytes unless noZeroes.
func (c *rawClient) exportName(name string, noZeroes bool) (size uint64, flags uint16) {
	c.t.Helper()
	c.option(specOptExportName, []byte(name))
	n := 8 + 2 + 124
	if noZeroes {
		n = 8 + 2
	}
	p := c.read(n, "NBD_OPT_EXPORT_NAME reply")
	if z := p[10:]; !bytes.Equal(z, make([]byte, len(z))) {
		c.t.Fatalf("the 124 reserved bytes after the export flags are not zero: % x", z)
	}
	return binary.BigEndian.Uint64(p[0:8]), binary.BigEndian.Uint16(p[8:10])
}

// expectClosed checks that the server hangs up: the next read ends in
// EOF (or a reset) rather than data or a timeout.
func (c *rawClient) expectClosed(why string) {
	c.t.Helper()
	c.arm()
	var b [1]byte
	n, err := c.r.Read(b[:])
	switch {
	case n > 0:
		c.t.Fatalf("%s: server sent %#x, want the connection closed", why, b[0])
	case errors.Is(err, os.ErrDeadlineExceeded):
		c.t.Fatalf("%s: server kept the connection open, want it closed", why)
	case err == nil:
		c.t.Fatalf("%s: read returned nothing and no error", why)
	}
}

// readLineWithin reads one line from r within timeout, for talking to a child
// process that prints progress.
func readLineWithin(t *testing.T, r *bufio.Reader, timeout time.Duration) string {
	t.Helper()
	type res struct {
		s   string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := r.ReadString('\n')
		ch <- res{s, err}
	}()
	select {
	case x := <-ch:
		if x.err != nil {
			t.Fatalf("reading a line: %v (got %q)", x.err, x.s)
		}
		return strings.TrimSpace(x.s)
	case <-time.After(timeout):
		t.Fatalf("no line within %v", timeout)
		return ""
	}
}
