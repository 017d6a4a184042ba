//go:build linux

package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The servers, in the order the report lists them. boardnbd comes first;
// the others are its peers, and the best of them is what it is held to.
const (
	srvBoardnbd  = "boardnbd"
	srvNbdkit    = "nbdkit"
	srvNbdServer = "nbd-server"
	srvQemuNbd   = "qemu-nbd"
)

var allServers = []string{srvBoardnbd, srvNbdkit, srvNbdServer, srvQemuNbd}

// serverBinary is the program each server needs on PATH; boardnbd is built.
var serverBinary = map[string]string{
	srvNbdkit:    "nbdkit",
	srvNbdServer: "nbd-server",
	srvQemuNbd:   "qemu-nbd",
}

// serverSetup says how each server is run, for the report: every server
// gets its defaults except where noted.
var serverSetup = map[string]string{
	srvBoardnbd:  "`boardnbd serve --listen 127.0.0.1:PORT IMAGE` (defaults: max_in_flight 32)",
	srvNbdkit:    "`nbdkit -f --exit-with-parent -i 127.0.0.1 -p PORT file IMAGE` (defaults: 16 threads, parallel; serves any export name, the URI uses \"\")",
	srvNbdServer: "config file with one export, `nbd-server -C FILE -p PIDFILE` (daemonizes and forks a process per connection; defaults: max_threads 4, no splice; `-d` would serve one client at a time, so it is not used)",
	srvQemuNbd:   "`qemu-nbd -f raw --cache=writeback --aio=threads -b 127.0.0.1 -p PORT -x NAME --persistent --shared=8 IMAGE` (cache and aio at their defaults: tmpfs has no O_DIRECT for cache=none or aio=native)",
}

// exportName is the name each server's clients ask for.
func exportName(server string) string {
	if server == srvNbdkit {
		return "" // nbdkit's file plugin serves whatever name is asked; "" is its default
	}
	return "disk"
}

// server is one running NBD server.
type server struct {
	name   string
	port   int
	export string
	pid    int        // the process whose tree is measured
	cmd    *exec.Cmd  // nil once a daemon's launcher has exited
	exited chan error // receives cmd's exit, for servers that stay in the foreground
	daemon bool       // pid is a daemon that the bench adopted as subreaper
	log    string
	info   exportInfo
	cpus   []int     // the CPUs it is pinned to; nil for all
	quota  *cpuQuota // the CPU quota it runs under; nil for none
}

func (s *server) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// uri is the NBD URI of the export, as fio and nbdcopy take it.
func (s *server) uri() string { return "nbd://" + s.addr() + "/" + s.export }

// alive reports whether the server process still runs.
func (s *server) alive() bool {
	if !s.daemon {
		select {
		case <-s.exited:
			return false
		default:
			return true
		}
	}
	st, err := readStat(s.pid)
	return err == nil && st.state != 'Z' && st.state != 'X'
}

// stop ends the server: SIGTERM to its process group, SIGKILL after a
// grace period. It signals only processes the bench started (the group of
// a foreground server is the one Setpgid gave it; a daemon leads its own
// session, with its per-connection children in the group).
func (s *server) stop() {
	if s.pid <= 0 {
		return
	}
	syscall.Kill(-s.pid, syscall.SIGTERM)
	syscall.Kill(s.pid, syscall.SIGTERM)
	deadline := time.Now().Add(10 * time.Second)
	for s.alive() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if s.alive() {
		syscall.Kill(-s.pid, syscall.SIGKILL)
		syscall.Kill(s.pid, syscall.SIGKILL)
	}
	if s.daemon {
		var ws syscall.WaitStatus
		syscall.Wait4(s.pid, &ws, 0, nil) // adopted as our child: reap it
	} else {
		<-s.exited
	}
	s.pid = 0
}

// freePort asks the kernel for a free loopback port. Another process could
// take it before the server binds it; startServer then fails and says so.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// becomeSubreaper makes processes that daemonize under the bench (nbd-server)
// its children rather than init's, so it can reap them.
func becomeSubreaper() error {
	const prSetChildSubreaper = 36 // PR_SET_CHILD_SUBREAPER
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); e != 0 {
		return e
	}
	return nil
}

// raiseNofile lifts RLIMIT_NOFILE to want (root may raise the hard limit),
// or as far as the hard limit allows. Children started afterwards inherit
// it: once a Go program sets the limit itself, os/exec no longer restores
// the original soft limit in children.
func raiseNofile(want uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Cur >= want {
		return lim.Cur, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	next := syscall.Rlimit{Cur: want, Max: max(want, lim.Max)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &next); err == nil {
		return want, nil
	}
	lim.Cur = lim.Max
	return lim.Cur, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
}

// startServer runs the named server on image at a free port, waits until it
// listens and returns it. dir is the server's private directory for logs
// and config.
func startServer(name, image, dir, boardnbdBin string, cpus []int, quota *cpuQuota) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &server{name: name, port: port, export: exportName(name), log: filepath.Join(dir, name+".log"), cpus: cpus, quota: quota}
	var argv []string
	switch name {
	case srvBoardnbd:
		argv = []string{boardnbdBin, "serve", "--listen", s.addr(), image}
	case srvNbdkit:
		argv = []string{"nbdkit", "-f", "--exit-with-parent", "--log=stderr",
			"-i", "127.0.0.1", "-p", strconv.Itoa(port), "file", image}
	case srvQemuNbd:
		argv = []string{"qemu-nbd", "-f", "raw", "--cache=writeback", "--aio=threads",
			"-b", "127.0.0.1", "-p", strconv.Itoa(port), "-x", s.export,
			"--persistent", "--shared=8", image}
	case srvNbdServer:
		conf := filepath.Join(dir, "nbd-server.conf")
		if err := os.WriteFile(conf, []byte(nbdServerConfig(port, s.export, image)), 0o644); err != nil {
			return nil, err
		}
		pidfile := filepath.Join(dir, "nbd-server.pid")
		os.Remove(pidfile)
		argv = []string{"nbd-server", "-C", conf, "-p", pidfile}
		s.daemon = true
		if err := s.launch(argv); err != nil {
			return nil, err
		}
		if err := <-s.exited; err != nil {
			return nil, fmt.Errorf("nbd-server: %v%s", err, logTail(s.log))
		}
		deadline := time.Now().Add(15 * time.Second)
		for {
			pid, err := readPidfile(pidfile)
			if err == nil {
				s.pid = pid
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("nbd-server wrote no pid file %s: %v (see syslog)", pidfile, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := s.waitListening(); err != nil {
			s.stop()
			return nil, err
		}
		return s, nil
	default:
		return nil, fmt.Errorf("unknown server %q (want one of %s)", name, strings.Join(allServers, ", "))
	}
	if err := s.launch(argv); err != nil {
		return nil, err
	}
	s.pid = s.cmd.Process.Pid
	if err := s.waitListening(); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// launch starts argv in its own process group with output to the log file.
// If the bench dies, the kernel kills a foreground server (Pdeathsig).
func (s *server) launch(argv []string) error {
	lf, err := os.Create(s.log)
	if err != nil {
		return err
	}
	argv = s.quota.wrap(pin(s.cpus, argv))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return fmt.Errorf("%s: %w", s.name, err)
	}
	s.cmd = cmd
	s.exited = make(chan error, 1)
	go func() {
		err := cmd.Wait()
		lf.Close()
		s.exited <- err
		close(s.exited)
	}()
	return nil
}

func (s *server) waitListening() error {
	deadline := time.Now().Add(15 * time.Second)
	for !portListening(s.port) {
		if !s.alive() {
			return fmt.Errorf("%s exited before listening on %d%s", s.name, s.port, logTail(s.log))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s is not listening on %d after 15s%s", s.name, s.port, logTail(s.log))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// probe handshakes once, to check the export and learn what it advertises.
func (s *server) probe() error {
	info, err := probeExport(s.addr(), s.export)
	if err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	if info.flags&flagReadOnly != 0 {
		return fmt.Errorf("%s: export %q is read-only; the write workloads need it writable", s.name, s.export)
	}
	s.info = info
	return nil
}

// nbdServerConfig is a minimal nbd-server(5) file: one named export on a
// loopback port, everything else at its defaults.
func nbdServerConfig(port int, name, image string) string {
	return fmt.Sprintf("[generic]\n    port = %d\n    listenaddr = 127.0.0.1\n[%s]\n    exportname = %s\n", port, name, image)
}

func readPidfile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pid file %s holds %q", path, b)
	}
	return pid, nil
}

// logTail is the end of a server log, for error messages.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "; its log ends:\n" + string(b)
}

// waitNoChildren waits, up to a limit, until pid has no child processes, so
// that nbd-server's per-connection processes are reaped (and their CPU time
// is in the parent's cutime) before the server's CPU time is read.
func waitNoChildren(pid int, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for len(childrenOf(pid)) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

var errNoTool = errors.New("not installed")

// needTool checks that a program is on PATH.
func needTool(name string) error {
	if _, err := exec.LookPath(name); err != nil {
		return fmt.Errorf("%s: %w (apt-get install %s)", name, errNoTool, debianPackage[name])
	}
	return nil
}

// debianPackage names the Debian package of each tool.
var debianPackage = map[string]string{
	"nbdkit":     "nbdkit",
	"nbd-server": "nbd-server",
	"qemu-nbd":   "qemu-utils",
	"fio":        "fio",
	"nbdcopy":    "libnbd-bin",
	"strace":     "strace",
	"perf":       "linux-perf",
}
