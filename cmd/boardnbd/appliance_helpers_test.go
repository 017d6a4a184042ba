//go:build linux

package main

// Helpers of the appliance tests (appliance_test.go): they run the real
// binary with a config on a loopback port, read its log, set up loop
// devices, and drive real NBD clients. Every identifier starts with "app"
// so that other tests of this package can have helpers of their own.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Timeouts of the appliance tests. Everything they wait for happens in
// milliseconds on a healthy machine; the bounds only turn a hang into a
// failure.
const (
	appCmdTimeout  = 30 * time.Second // one client or tool invocation
	appWaitTimeout = 10 * time.Second // a log line, a process exit
	appServerLife  = 2 * time.Minute  // a server started by a test, at most
)

// appPython is Debian's interpreter, which has the nbd module of
// python3-libnbd; a python3 earlier on PATH (pyenv) may lack it.
const appPython = "/usr/bin/python3"

// appCI reports whether the tests run in CI, where a missing tool or
// privilege is a failure rather than a reason to skip.
func appCI() bool { return os.Getenv("CI") != "" }

// appSkipOrFail skips the test, or fails it in CI.
func appSkipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if appCI() {
		t.Fatalf(format+" (CI is set: not skipping)", args...)
	}
	t.Skipf(format, args...)
}

// appNeedRoot skips a test that needs root (loop devices, mount) when not
// root, or fails it in CI.
func appNeedRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		appSkipOrFail(t, "needs root for loop devices")
	}
}

// appNeedTools skips the test, or fails it in CI, unless every named
// program is installed. "nbdsh" means Debian's python3 with the nbd module.
func appNeedTools(t *testing.T, names ...string) {
	t.Helper()
	for _, name := range names {
		if name == "nbdsh" {
			ctx, cancel := context.WithTimeout(context.Background(), appCmdTimeout)
			err := exec.CommandContext(ctx, appPython, "-c", "import nbd").Run()
			cancel()
			if err != nil {
				appSkipOrFail(t, "nbdsh: %s -c 'import nbd': %v (install python3-libnbd)", appPython, err)
			}
			continue
		}
		if _, err := exec.LookPath(name); err != nil {
			appSkipOrFail(t, "%s is not installed: %v", name, err)
		}
	}
}

// appBinary returns the boardnbd binary, built once per test run by
// boardnbdBinary (interop_helpers_test.go), whose TestMain removes it at
// the end.
func appBinary(t *testing.T) string {
	t.Helper()
	return boardnbdBinary(t)
}

// appRun runs a command with a timeout and returns its standard output,
// failing the test if it does not exit 0.
func appRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	stdout, stderr, err := appRunErr(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), err, stdout, stderr)
	}
	return stdout
}

// appRunErr runs a command with a timeout and returns its output and exit
// error.
func appRunErr(name string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), appCmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	cmd.WaitDelay = time.Second
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (timed out after %v)", err, appCmdTimeout)
	}
	return o.String(), e.String(), err
}

// appExitCode returns the exit status in a command's error: 0 for nil, -1
// for a command that did not exit by itself.
func appExitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	default:
		return -1
	}
}

// appRandom returns n reproducible pseudo-random bytes.
func appRandom(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], r.Uint64())
		copy(b[i:], w[:])
	}
	return b
}

// appWriteFile writes data to dir/name and returns the path.
func appWriteFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// appLoop attaches a loop device over img with the extra losetup args and
// detaches it when the test ends. The kernel defers the detach of a device
// that is still open until its last close.
func appLoop(t *testing.T, img string, args ...string) string {
	t.Helper()
	appNeedRoot(t)
	appNeedTools(t, "losetup")
	dev := strings.TrimSpace(appRun(t, "losetup", append(append([]string{"--find", "--show"}, args...), img)...))
	if !strings.HasPrefix(dev, "/dev/loop") {
		t.Fatalf("losetup --find --show %s = %q, want a /dev/loopN", img, dev)
	}
	t.Cleanup(func() {
		if _, stderr, err := appRunErr("losetup", "--detach", dev); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, stderr)
		}
	})
	return dev
}

// appMountExt4 makes an ext4 file system on dev, mounts it on a new
// temporary directory and unmounts it when the test ends.
func appMountExt4(t *testing.T, dev string) string {
	t.Helper()
	appNeedTools(t, "mkfs.ext4", "mount", "umount")
	appRun(t, "mkfs.ext4", "-q", "-F", dev)
	dir := t.TempDir()
	appRun(t, "mount", "-t", "ext4", dev, dir)
	t.Cleanup(func() {
		if _, stderr, err := appRunErr("umount", dir); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, stderr)
		}
	})
	return dir
}

// appFreeAddr returns a loopback address with a port that was free a
// moment ago.
func appFreeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// appConfig is the text of a config file listening on addr, without
// discovery, serving the exports given as YAML list items.
func appConfig(addr, exports string) string {
	return fmt.Sprintf("version: 1\nlisten: [%q]\ndiscovery: {enabled: false}\nexports:\n%s", addr, exports)
}

// appLog collects the lines a process writes to stderr, so tests can wait
// for one.
type appLog struct {
	mu      sync.Mutex
	lines   []string
	changed chan struct{} // closed and replaced on each line and at EOF
	eof     bool
}

func newAppLog() *appLog { return &appLog{changed: make(chan struct{})} }

func (l *appLog) consume(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l.mu.Lock()
		l.lines = append(l.lines, sc.Text())
		close(l.changed)
		l.changed = make(chan struct{})
		l.mu.Unlock()
	}
	l.mu.Lock()
	l.eof = true
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

// mark returns the number of lines so far, to wait for lines after it.
func (l *appLog) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}

func (l *appLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// find returns the attributes of the first line from line from on whose
// msg is msg and whose attributes include want, and its index.
func (l *appLog) find(from int, msg string, want map[string]string) (map[string]string, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := from; i < len(l.lines); i++ {
		a := appParseLog(l.lines[i])
		if a["msg"] != msg {
			continue
		}
		ok := true
		for k, v := range want {
			ok = ok && a[k] == v
		}
		if ok {
			return a, i
		}
	}
	return nil, -1
}

// wait waits for a line as find finds it and returns its attributes. It
// fails the test if none comes within appWaitTimeout or the process ends
// first.
func (l *appLog) wait(t *testing.T, from int, msg string, want map[string]string) map[string]string {
	t.Helper()
	var a map[string]string
	l.waitFunc(t, fmt.Sprintf("%q %v", msg, want), func(string) bool {
		a, _ = l.find(from, msg, want)
		return a != nil
	})
	return a
}

// waitFunc waits until ok, called with the whole log on each new line, is
// true, and returns the log. It fails the test if that does not happen
// within appWaitTimeout or before the process ends; what names what was
// awaited.
func (l *appLog) waitFunc(t *testing.T, what string, ok func(log string) bool) string {
	t.Helper()
	deadline := time.NewTimer(appWaitTimeout)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		changed, eof := l.changed, l.eof
		l.mu.Unlock()
		if text := l.String(); ok(text) {
			return text
		}
		if eof {
			t.Fatalf("process ended before %s (its log follows)", what)
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("no %s within %v (the log follows)", what, appWaitTimeout)
		}
	}
}

// appParseLog splits a log/slog text line (key=value key="quoted value",
// keys quoted too when they have spaces) into its attributes. A line that
// is not slog's (a tool's own) gives its whole text as msg.
func appParseLog(line string) map[string]string {
	a := map[string]string{}
	s := line
	for s != "" {
		key, rest, ok := appLogToken(s, '=')
		if !ok || rest == "" || rest[0] != '=' {
			return map[string]string{"msg": line}
		}
		val, rest, ok := appLogToken(rest[1:], ' ')
		if !ok {
			return map[string]string{"msg": line}
		}
		a[key] = val
		s = strings.TrimLeft(rest, " ")
	}
	return a
}

// appLogToken reads a quoted string, or the text up to stop.
func appLogToken(s string, stop byte) (tok, rest string, ok bool) {
	if !strings.HasPrefix(s, `"`) {
		i := strings.IndexByte(s, stop)
		if i < 0 {
			i = len(s)
		}
		if strings.ContainsAny(s[:i], " \"") {
			return "", "", false
		}
		return s[:i], s[i:], true
	}
	end := 1
	for end < len(s) && s[end] != '"' {
		if s[end] == '\\' {
			end++
		}
		end++
	}
	if end >= len(s) {
		return "", "", false
	}
	tok, err := strconv.Unquote(s[:end+1])
	return tok, s[end+1:], err == nil
}

// appServer is a running boardnbd (or a program that execs it) with its
// log.
type appServer struct {
	Addr   string // the address it listens on, if started by appServe
	Config string // the config file
	Log    *appLog

	cmd     *exec.Cmd
	cancel  context.CancelFunc
	done    chan struct{} // closed when the process has exited
	waitErr error
	stopped bool
}

// appStartProcess starts a program whose stderr is the log, and stops it
// with SIGTERM when the test ends, failing the test unless it then exits 0
// (or, with anyExit, exits at all).
func appStartProcess(t *testing.T, anyExit bool, name string, args ...string) *appServer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), appServerLife)
	cmd := exec.CommandContext(ctx, name, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	s := &appServer{Log: newAppLog(), cmd: cmd, cancel: cancel, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		s.Log.consume(stderr)
		s.waitErr = cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		if s.stopped {
			return
		}
		err := s.stop()
		if err != nil && !(anyExit && errors.As(err, new(*exec.ExitError))) {
			t.Errorf("%s at the end of the test: %v; log:\n%s", name, err, s.Log)
		} else if t.Failed() {
			t.Logf("log of %s:\n%s", name, s.Log)
		}
	})
	return s
}

// stop sends SIGTERM and waits for the exit; it returns the exit error.
func (s *appServer) stop() error {
	s.stopped = true
	defer s.cancel()
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		return s.waitErr
	case <-time.After(appWaitTimeout):
		s.cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("did not exit within %v of SIGTERM; killed", appWaitTimeout)
	}
}

// Stop stops the server with SIGTERM and fails the test unless it exits 0.
func (s *appServer) Stop(t *testing.T) {
	t.Helper()
	if err := s.stop(); err != nil {
		t.Fatalf("server exit after SIGTERM: %v; log:\n%s", err, s.Log)
	}
}

// Signal sends sig to the server.
func (s *appServer) Signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

// Running reports whether the process has not exited.
func (s *appServer) Running() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// Wait waits for the process to exit by itself and returns its exit error.
func (s *appServer) Wait(t *testing.T) error {
	t.Helper()
	select {
	case <-s.done:
		s.stopped = true
		return s.waitErr
	case <-time.After(appWaitTimeout):
		t.Fatalf("process still running after %v (its log follows)", appWaitTimeout)
		return nil
	}
}

// appServe writes dir/config.yaml serving exports (YAML list items) on a
// free loopback port, starts "boardnbd serve -c" on it and waits for it to
// listen. The server is stopped with SIGTERM when the test ends and must
// then exit 0.
func appServe(t *testing.T, dir, exports string) *appServer {
	t.Helper()
	cfg := filepath.Join(dir, "config.yaml")
	for attempt := 0; ; attempt++ {
		addr := appFreeAddr(t)
		if err := os.WriteFile(cfg, []byte(appConfig(addr, exports)), 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := appTryServe(t, cfg, addr)
		if err == nil {
			return s
		}
		// Another process took the port between appFreeAddr and listen.
		if attempt < 2 && strings.Contains(s.Log.String(), "address already in use") {
			continue
		}
		t.Fatal(err)
	}
}

// appServeConfig starts "boardnbd serve -c cfg", which listens on addr,
// and waits for it to listen.
func appServeConfig(t *testing.T, cfg, addr string) *appServer {
	t.Helper()
	s, err := appTryServe(t, cfg, addr)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func appTryServe(t *testing.T, cfg, addr string) (*appServer, error) {
	t.Helper()
	s := appStartProcess(t, false, appBinary(t), "serve", "-c", cfg)
	s.Addr, s.Config = addr, cfg
	deadline := time.NewTimer(appWaitTimeout)
	defer deadline.Stop()
	for {
		s.Log.mu.Lock()
		changed := s.Log.changed
		s.Log.mu.Unlock()
		if a, _ := s.Log.find(0, "listening", map[string]string{"addr": addr}); a != nil {
			return s, nil
		}
		select {
		case <-changed:
		case <-s.done:
			s.stopped = true
			return s, fmt.Errorf("boardnbd serve -c %s exited before listening: %v; log:\n%s", cfg, s.waitErr, s.Log)
		case <-deadline.C:
			return s, fmt.Errorf("boardnbd serve -c %s: no \"listening\" on %s within %v (its log follows)", cfg, addr, appWaitTimeout)
		}
	}
}

// Rewrite replaces the server's config file with one listening on the same
// address and serving exports; the server reads it at the next SIGHUP.
func (s *appServer) Rewrite(t *testing.T, exports string) {
	t.Helper()
	appWriteRaw(t, s.Config, appConfig(s.Addr, exports))
}

// appWriteRaw replaces a file atomically, so that a reload never reads it
// half written.
func appWriteRaw(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// URI returns the nbd:// URI of an export of the server.
func (s *appServer) URI(export string) string { return "nbd://" + s.Addr + "/" + export }

// appInfo is an export as nbdinfo --json describes it.
type appInfo struct {
	Name             string `json:"export-name"`
	Size             int64  `json:"export-size"`
	ReadOnly         bool   `json:"is_read_only"`
	BlockSizeMinimum int64  `json:"block_size_minimum"`
	BlockSizeMax     int64  `json:"block_size_maximum"`
	CanMultiConn     bool   `json:"can_multi_conn"`
}

// appNbdinfo runs nbdinfo --json on args and returns the exports it lists.
func appNbdinfo(t *testing.T, args ...string) []appInfo {
	t.Helper()
	out := appRun(t, "nbdinfo", append([]string{"--json"}, args...)...)
	var v struct{ Exports []appInfo }
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("nbdinfo --json %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return v.Exports
}

// appNbdinfoOne runs nbdinfo --json on one export URI.
func appNbdinfoOne(t *testing.T, uri string) appInfo {
	t.Helper()
	ex := appNbdinfo(t, uri)
	if len(ex) != 1 {
		t.Fatalf("nbdinfo --json %s: %d exports, want 1", uri, len(ex))
	}
	return ex[0]
}

// appList returns the export names nbdinfo --list finds on a server.
func appList(t *testing.T, s *appServer) []string {
	t.Helper()
	var names []string
	for _, e := range appNbdinfo(t, "--list", "nbd://"+s.Addr) {
		names = append(names, e.Name)
	}
	return names
}

// appNbdsh runs a Python script in nbdsh, connected to uri unless uri is
// "", and returns what it prints. In the script h is the handle and nbd the
// module.
func appNbdsh(t *testing.T, uri, script string) string {
	t.Helper()
	args := []string{"-m", "nbd"}
	if uri != "" {
		args = append(args, "-u", uri)
	}
	return appRun(t, appPython, append(args, "-c", script)...)
}

// appNbdshRead reads length bytes at off from uri with nbdsh.
func appNbdshRead(t *testing.T, uri string, off, length int64) []byte {
	t.Helper()
	out := appNbdsh(t, uri, fmt.Sprintf("import sys\nsys.stdout.buffer.write(h.pread(%d, %d))\n", length, off))
	return []byte(out)
}

// appNbdshWrite writes data at off to uri with nbdsh, with libnbd's own
// checks off so the server is the one to refuse, and returns "ok" or the
// errno name the server replied with.
func appNbdshWrite(t *testing.T, uri string, off int64, data []byte) string {
	t.Helper()
	script := fmt.Sprintf(`h.set_strict_mode(0)
try:
    h.pwrite(open(%q, "rb").read(), %d)
    h.flush()
    print("ok")
except nbd.Error as e:
    print(e.errno)
`, appWriteFile(t, t.TempDir(), "data", data), off)
	return strings.TrimSpace(appNbdsh(t, uri, script))
}

// appNbdcopy returns the whole content of an export, read by nbdcopy.
func appNbdcopy(t *testing.T, uri string) []byte {
	t.Helper()
	return []byte(appRun(t, "nbdcopy", uri, "-"))
}

// A minimal NBD client, for what libnbd cannot do: bind a source address,
// keep a session open across events the test causes. It speaks fixed
// newstyle, simple replies only.

// appClient is one connection of the minimal client.
type appClient struct {
	c      net.Conn
	handle uint64
	size   uint64
}

// appDial connects from the local address laddr ("" for any) to addr and
// does the greeting.
func appDial(t *testing.T, laddr, addr string) *appClient {
	t.Helper()
	d := net.Dialer{Timeout: appWaitTimeout}
	if laddr != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(laddr)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, laddr, err)
	}
	t.Cleanup(func() { c.Close() })
	cl := &appClient{c: c}
	cl.deadline()
	var greet [18]byte
	if _, err := io.ReadFull(c, greet[:]); err != nil {
		t.Fatalf("reading the greeting from %s: %v", addr, err)
	}
	if binary.BigEndian.Uint64(greet[0:]) != specMagicInit || binary.BigEndian.Uint64(greet[8:]) != specMagicOpt {
		t.Fatalf("greeting from %s = %x, want NBDMAGIC IHAVEOPT", addr, greet)
	}
	// NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES
	if _, err := c.Write([]byte{0, 0, 0, 3}); err != nil {
		t.Fatal(err)
	}
	return cl
}

func (cl *appClient) deadline() { cl.c.SetDeadline(time.Now().Add(appWaitTimeout)) }

// option sends an option and returns its replies up to the final one,
// whose type it also returns.
func (cl *appClient) option(opt uint32, data []byte) (replies [][]byte, final uint32, err error) {
	cl.deadline()
	msg := binary.BigEndian.AppendUint64(nil, specMagicOpt)
	msg = binary.BigEndian.AppendUint32(msg, opt)
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(data)))
	if _, err := cl.c.Write(append(msg, data...)); err != nil {
		return nil, 0, err
	}
	for {
		var h [20]byte
		if _, err := io.ReadFull(cl.c, h[:]); err != nil {
			return nil, 0, err
		}
		if binary.BigEndian.Uint64(h[0:]) != specMagicOptReply || binary.BigEndian.Uint32(h[8:]) != opt {
			return nil, 0, fmt.Errorf("option %d: bad reply header %x", opt, h)
		}
		typ, n := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
		if n > 1<<20 {
			return nil, 0, fmt.Errorf("option %d: reply of %d bytes", opt, n)
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(cl.c, p); err != nil {
			return nil, 0, err
		}
		if typ == specRepAck || typ&(1<<31) != 0 {
			return replies, typ, nil
		}
		replies = append(replies, append(binary.BigEndian.AppendUint32(nil, typ), p...))
	}
}

// List returns the export names NBD_OPT_LIST gives.
func (cl *appClient) List(t *testing.T) []string {
	t.Helper()
	replies, final, err := cl.option(specOptList, nil)
	if err != nil || final != specRepAck {
		t.Fatalf("NBD_OPT_LIST = reply %#x, %v", final, err)
	}
	var names []string
	for _, r := range replies {
		if binary.BigEndian.Uint32(r) != specRepServer || len(r) < 8 {
			t.Fatalf("NBD_OPT_LIST reply %x, want NBD_REP_SERVER", r)
		}
		n := binary.BigEndian.Uint32(r[4:])
		if int(n) > len(r)-8 {
			t.Fatalf("NBD_OPT_LIST reply %x: name length %d", r, n)
		}
		names = append(names, string(r[8:8+n]))
	}
	return names
}

// Go sends NBD_OPT_GO for name. It returns the final reply type, which is
// NBD_REP_ACK when the transmission phase began; then the client knows the
// export's size.
func (cl *appClient) Go(t *testing.T, name string) uint32 {
	t.Helper()
	data := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	data = append(data, name...)
	data = append(data, 0, 0) // no information requests
	replies, final, err := cl.option(specOptGo, data)
	if err != nil {
		t.Fatalf("NBD_OPT_GO %q: %v", name, err)
	}
	for _, r := range replies {
		// NBD_REP_INFO, NBD_INFO_EXPORT: size, transmission flags
		if binary.BigEndian.Uint32(r) == specRepInfo && len(r) == 16 && binary.BigEndian.Uint16(r[4:]) == 0 {
			cl.size = binary.BigEndian.Uint64(r[6:])
		}
	}
	return final
}

// request sends a request and waits for its simple reply; it returns the
// NBD error value of the reply (0 for success).
func (cl *appClient) request(cmd uint16, off uint64, length uint32, payload, into []byte) (uint32, error) {
	cl.deadline()
	cl.handle++
	var h [28]byte
	binary.BigEndian.PutUint32(h[0:], specMagicRequest)
	binary.BigEndian.PutUint16(h[6:], cmd)
	binary.BigEndian.PutUint64(h[8:], cl.handle)
	binary.BigEndian.PutUint64(h[16:], off)
	binary.BigEndian.PutUint32(h[24:], length)
	if _, err := cl.c.Write(append(h[:], payload...)); err != nil {
		return 0, err
	}
	var r [16]byte
	if _, err := io.ReadFull(cl.c, r[:]); err != nil {
		return 0, err
	}
	if binary.BigEndian.Uint32(r[0:]) != specMagicSimple || binary.BigEndian.Uint64(r[8:]) != cl.handle {
		return 0, fmt.Errorf("bad reply header %x", r)
	}
	errno := binary.BigEndian.Uint32(r[4:])
	if errno == 0 && into != nil {
		if _, err := io.ReadFull(cl.c, into); err != nil {
			return 0, err
		}
	}
	return errno, nil
}

// Read reads length bytes at off; it returns the data, or the NBD error
// value of a failed read.
func (cl *appClient) Read(t *testing.T, off uint64, length uint32) ([]byte, uint32) {
	t.Helper()
	buf := make([]byte, length)
	errno, err := cl.request(specCmdRead, off, length, nil, buf)
	if err != nil {
		t.Fatalf("NBD_CMD_READ(off=%d, len=%d): %v", off, length, err)
	}
	if errno != 0 {
		return nil, errno
	}
	return buf, 0
}

// Write writes data at off and returns the NBD error value of the reply.
func (cl *appClient) Write(t *testing.T, off uint64, data []byte) uint32 {
	t.Helper()
	errno, err := cl.request(specCmdWrite, off, uint32(len(data)), data, nil)
	if err != nil {
		t.Fatalf("NBD_CMD_WRITE(off=%d, len=%d): %v", off, len(data), err)
	}
	return errno
}

// Close sends NBD_CMD_DISC and closes the connection.
func (cl *appClient) Close() {
	cl.deadline()
	var h [28]byte
	binary.BigEndian.PutUint32(h[0:], specMagicRequest)
	binary.BigEndian.PutUint16(h[6:], specCmdDisc)
	cl.c.Write(h[:])
	cl.c.Close()
}

// LocalAddr returns the address of the client's end, as the server logs
// it in remote=.
func (cl *appClient) LocalAddr() string { return cl.c.LocalAddr().String() }
