//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	mib = 1 << 20
	gib = 1 << 30
)

// settings are the knobs of one run.
type settings struct {
	rounds      int
	fioTime     time.Duration
	syscallTime time.Duration
	imageMiB    int64
	servers     []string
	workloads   []workload
	conns       []int // idle connection counts for the footprint
	settle      time.Duration
	copyTimeout time.Duration
	syscalls    bool // count system calls per I/O
	perf        bool // with perf stat (set by prepare: perf is installed)
	strace      bool // with strace -c (likewise)
	footprint   bool
	dir         string
	boardnbdBin string // prebuilt binary; "" builds one
	cpus        cpuPlan
	quotaShare  float64 // of one core, for every server; 0 for no quota
	quick       bool
}

// bench is one run in progress.
type bench struct {
	set      settings
	began    time.Time
	log      io.Writer // progress
	dir      string    // on tmpfs
	bin      string    // boardnbd binary
	binSize  int64
	src      string // source file of the write copies
	servers  []*server
	res      *results
	idleRSS  map[string]int64
	failures []string
	traces   []traceResult
	foot     *footprint
	notes    []string
	quota    *cpuQuota // nil without -server-quota
	held     throttle  // the quota's counters once the servers are stopped
}

func (b *bench) progress(format string, args ...any) {
	t := time.Since(b.began).Round(time.Second)
	fmt.Fprintf(b.log, "nbdbench %5s: "+format+"\n", append([]any{t}, args...)...)
}

func (b *bench) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	b.failures = append(b.failures, msg)
	b.progress("FAILED: %s", msg)
}

// prepare checks tools, makes the tmpfs directory and images, and builds
// boardnbd. The returned cleanup removes everything.
func (b *bench) prepare(ctx context.Context) (func(), error) {
	for _, t := range []string{"fio", "nbdcopy"} {
		if err := needTool(t); err != nil {
			return nil, err
		}
	}
	var keep []string
	for _, s := range b.set.servers {
		if bin := serverBinary[s]; bin != "" {
			if err := needTool(bin); err != nil {
				b.notes = append(b.notes, fmt.Sprintf("%s skipped: %v", s, err))
				b.progress("%s skipped: %v", s, err)
				continue
			}
		}
		keep = append(keep, s)
	}
	b.set.servers = keep
	if len(keep) == 0 {
		return nil, errors.New("no server to measure")
	}
	if b.set.syscalls {
		b.set.perf, b.set.strace = true, true
		for _, t := range []string{"perf", "strace"} {
			if err := needTool(t); err != nil {
				b.notes = append(b.notes, fmt.Sprintf("syscall counts without %s: %v", t, err))
				b.set.perf = b.set.perf && t != "perf"
				b.set.strace = b.set.strace && t != "strace"
			}
		}
	}
	if n, err := raiseNofile(1 << 16); err != nil || n < 4096 {
		b.progress("RLIMIT_NOFILE is %d (%v); the idle connection counts may be cut short", n, err)
	}
	if err := becomeSubreaper(); err != nil {
		b.progress("cannot become a subreaper (%v); nbd-server will be reaped by init", err)
	}

	size := b.set.imageMiB * mib
	need := size*int64(len(keep)+1) + 8*64*mib + 64*mib
	dir, rm, err := workDir(b.set.dir, need)
	if err != nil {
		return nil, err
	}
	b.dir = dir
	cleanup := func() {
		for _, s := range b.servers {
			s.stop()
		}
		if b.quota != nil {
			if err := b.quota.remove(); err != nil {
				b.progress("%v", err)
			}
		}
		rm()
	}
	if b.set.quotaShare > 0 {
		if b.quota, err = newCPUQuota(b.set.quotaShare); err != nil {
			cleanup()
			return nil, err
		}
	}
	if slices.Contains(keep, srvBoardnbd) {
		if err := b.buildBoardnbd(ctx); err != nil {
			cleanup()
			return nil, err
		}
	}
	b.progress("writing %d images of %d MiB in %s", len(keep)+1, b.set.imageMiB, dir)
	b.src = filepath.Join(dir, "source.img")
	if err := writeImage(b.src, size, 0); err != nil {
		cleanup()
		return nil, err
	}
	for i, s := range keep {
		sd := filepath.Join(dir, s)
		if err := os.Mkdir(sd, 0o755); err != nil {
			cleanup()
			return nil, err
		}
		if err := writeImage(filepath.Join(sd, "disk"), size, uint64(i+1)); err != nil {
			cleanup()
			return nil, err
		}
	}
	return cleanup, nil
}

// buildBoardnbd builds the static, stripped binary the Makefile ships, from
// the module this program is run in.
func (b *bench) buildBoardnbd(ctx context.Context) error {
	if b.set.boardnbdBin != "" {
		b.bin = b.set.boardnbdBin
	} else {
		root, err := moduleRoot()
		if err != nil {
			return err
		}
		if err := os.Mkdir(filepath.Join(b.dir, "bin"), 0o755); err != nil {
			return err
		}
		b.bin = filepath.Join(b.dir, "bin", "boardnbd")
		b.progress("building %s from %s", b.bin, root)
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", b.bin, "./cmd/boardnbd")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build ./cmd/boardnbd: %v\n%s", err, out)
		}
	}
	st, err := os.Stat(b.bin)
	if err != nil {
		return err
	}
	b.binSize = st.Size()
	return nil
}

// moduleRoot finds the boardnbd module above the working directory.
func moduleRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		mod, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && strings.HasPrefix(string(mod), "module boardnbd\n") {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", errors.New("not inside the boardnbd module: run from its tree, or give -boardnbd BINARY")
		}
		d = parent
	}
}

// startServers starts every server on its own image, records its idle RSS
// and checks its export with one handshake.
func (b *bench) startServers() error {
	b.idleRSS = make(map[string]int64)
	var ok []string
	for _, name := range b.set.servers {
		sd := filepath.Join(b.dir, name)
		s, err := startServer(name, filepath.Join(sd, "disk"), sd, b.bin, b.set.cpus.server, b.quota)
		if err != nil {
			b.fail("start %s: %v", name, err)
			continue
		}
		b.servers = append(b.servers, s)
		ok = append(ok, name)
	}
	if len(b.servers) == 0 {
		return errors.New("no server started")
	}
	b.set.servers = ok
	time.Sleep(b.set.settle)
	for _, s := range b.servers {
		if rss, err := readRSS(s.pid); err == nil {
			b.idleRSS[s.name] = rss
		}
	}
	var live []*server
	for _, s := range b.servers {
		if err := s.probe(); err != nil {
			b.fail("%v", err)
			s.stop()
			continue
		}
		if s.info.size != uint64(b.set.imageMiB*mib) {
			b.fail("%s: export size %d, want %d", s.name, s.info.size, b.set.imageMiB*mib)
		}
		b.progress("%s: pid %d, %s, multi-conn %v", s.name, s.pid, s.uri(), s.info.multiConn())
		live = append(live, s)
	}
	b.servers = live
	b.set.servers = b.set.servers[:0]
	for _, s := range live {
		b.set.servers = append(b.set.servers, s.name)
	}
	if len(live) == 0 {
		return errors.New("no server passed the handshake probe")
	}
	return nil
}

// rotate returns the servers in the order of round r: each round starts
// with the next server, so none always runs first or last.
func rotate(servers []*server, r int) []*server {
	n := len(servers)
	out := make([]*server, 0, n)
	for i := range n {
		out = append(out, servers[(i+r)%n])
	}
	return out
}

// runRounds runs every workload on every server, round after round.
func (b *bench) runRounds(ctx context.Context) error {
	b.res = newResults()
	for r := range b.set.rounds {
		for _, w := range b.set.workloads {
			for _, s := range rotate(b.servers, r) {
				if err := ctx.Err(); err != nil {
					return err
				}
				b.runOne(ctx, r, w, s)
			}
		}
	}
	return nil
}

func (b *bench) runOne(ctx context.Context, round int, w workload, s *server) {
	label := fmt.Sprintf("round %d/%d %-30s %-10s", round+1, b.set.rounds, w.title, s.name)
	if !s.alive() {
		b.fail("%s: server is not running%s", label, logTail(s.log))
		b.record(w, s, nil)
		return
	}
	var vals map[metric]float64
	var err error
	if w.copy != nil {
		vals, err = b.runCopy(ctx, w, s)
	} else {
		vals, err = b.runFio(ctx, w, s)
	}
	if err != nil {
		if ctx.Err() == nil {
			b.fail("%s: %v", label, err)
		}
		b.record(w, s, nil)
		return
	}
	b.record(w, s, vals)
	var parts []string
	for _, m := range w.metrics() {
		parts = append(parts, fmt.Sprintf("%s %s", formatValue(vals[m]), m.name))
	}
	b.progress("%s %s", label, strings.Join(parts, ", "))
}

// record stores one run's figures, NaN for each when it failed.
func (b *bench) record(w workload, s *server, vals map[metric]float64) {
	for _, m := range w.metrics() {
		v, ok := vals[m]
		if !ok {
			v = math.NaN()
		}
		b.res.add(w.key, s.name, m, v)
	}
}

// measure runs cmd and returns its wall time and the server's CPU time
// over it. The CPU time is read after the server's per-connection
// processes, if any, have been reaped. A run that fails still has its
// times measured, with the error beside them.
func measure(cmd *exec.Cmd, s *server) (wall, cpu time.Duration, err error) {
	waitNoChildren(s.pid, 3*time.Second)
	before, err := processCPU(s.pid)
	if err != nil {
		return 0, 0, err
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	runErr := cmd.Run()
	wall = time.Since(start)
	waitNoChildren(s.pid, 3*time.Second)
	after, err := processCPU(s.pid)
	if err != nil {
		return 0, 0, err
	}
	if runErr != nil {
		runErr = fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), runErr, tail(out.Bytes()))
	}
	return wall, after - before, runErr
}

// quiesce waits until the server's CPU time stops growing, for at most
// limit: after a client was killed, the server may still be working
// through the requests it had queued, which must not count against the
// next run.
func quiesce(s *server, limit time.Duration) {
	deadline := time.Now().Add(limit)
	last, _ := processCPU(s.pid)
	for still := 0; still < 3 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		now, err := processCPU(s.pid)
		if err != nil {
			return
		}
		if now == last {
			still++
		} else {
			still = 0
		}
		last = now
	}
}

// runCopy copies the whole image with nbdcopy, or as much of it as it
// copies in the copy timeout; nbdcopy's machine-readable progress (fd 3)
// then says how much that was, and the figures are over that part.
func (b *bench) runCopy(ctx context.Context, w workload, s *server) (map[metric]float64, error) {
	args := []string{"--no-extents", "--connections=" + strconv.Itoa(w.copy.conns), "--progress=3"}
	if w.copy.write {
		args = append(args, b.src, s.uri())
	} else {
		args = append(args, s.uri(), "null:")
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer pr.Close()
	pct := make(chan int, 1)
	go func() { pct <- lastProgress(pr) }()
	cctx, cancel := context.WithTimeout(ctx, b.set.copyTimeout)
	defer cancel()
	argv := pin(b.set.cpus.client, append([]string{"nbdcopy"}, args...))
	cmd := exec.CommandContext(cctx, argv[0], argv[1:]...)
	cmd.ExtraFiles = []*os.File{pw}
	wall, cpu, err := measure(cmd, s)
	pw.Close()
	done := <-pct
	bytes := float64(b.set.imageMiB * mib)
	partial := false
	if err != nil {
		if ctx.Err() != nil || cctx.Err() == nil || done <= 0 {
			return nil, err
		}
		// Timed out: keep the rate over the part copied.
		quiesce(s, 30*time.Second)
		partial = true
		bytes *= float64(done) / 100
		b.progress("%s %s: nbdcopy stopped after %s at %d%%", w.title, s.name, b.set.copyTimeout, done)
	}
	vals := map[metric]float64{
		mMiBs:    bytes / mib / wall.Seconds(),
		mCPUGiB:  cpu.Seconds() / (bytes / gib),
		mCopyCPU: math.NaN(),
	}
	if ps := cmd.ProcessState; ps != nil {
		vals[mCopyCPU] = 100 * (ps.UserTime() + ps.SystemTime()).Seconds() / wall.Seconds()
	}
	if partial {
		b.res.markPartial(w.key, s.name, done)
	}
	return vals, nil
}

// lastProgress reads nbdcopy's "N/100" lines to the end and returns the
// last N, or 0.
func lastProgress(r io.Reader) int {
	n := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if v, ok := parseProgress(sc.Text()); ok {
			n = v
		}
	}
	return n
}

// parseProgress decodes one line of nbdcopy --progress=FD.
func parseProgress(line string) (int, bool) {
	num, ok := strings.CutSuffix(strings.TrimSpace(line), "/100")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 || n > 100 {
		return 0, false
	}
	return n, true
}

func (b *bench) runFio(ctx context.Context, w workload, s *server) (map[metric]float64, error) {
	r, cpu, err := b.fio(ctx, *w.fio, s, b.set.fioTime)
	if err != nil {
		return nil, err
	}
	vals := map[metric]float64{mP99: math.NaN(), mClientCPU: r.cpu}
	if r.p99 >= 0 {
		vals[mP99] = float64(r.p99) / float64(time.Microsecond)
	}
	if w.fio.bs == "4k" {
		vals[mIOPS] = r.iops
		vals[mCPUk] = float64(cpu.Milliseconds()) / (float64(r.ios) / 1000)
	} else {
		vals[mMiBs] = r.bw / mib
		vals[mCPUGiB] = cpu.Seconds() / (r.bw * r.runtime.Seconds() / gib)
	}
	return vals, nil
}

// fio runs one fio job against s and returns its report and the server's
// CPU time over it.
func (b *bench) fio(ctx context.Context, j fioJob, s *server, runtime time.Duration) (fioResult, time.Duration, error) {
	return b.runFioJob(ctx, j, s, runtime, nil)
}

// runFioJob is fio with its command line after prefix (a program that
// runs it, such as perf stat).
func (b *bench) runFioJob(ctx context.Context, j fioJob, s *server, runtime time.Duration, prefix []string) (fioResult, time.Duration, error) {
	out := filepath.Join(b.dir, "fio.json")
	os.Remove(out)
	argv := append(slices.Clone(prefix), pin(b.set.cpus.client, append([]string{"fio"}, fioArgs(j, s.uri(), runtime, out)...))...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	_, cpu, err := measure(cmd, s)
	if err != nil {
		return fioResult{}, 0, err
	}
	js, err := os.ReadFile(out)
	if err != nil {
		return fioResult{}, 0, err
	}
	r, err := parseFio(js, j.writes())
	return r, cpu, err
}

// tail is the end of a command's output, for error messages.
func tail(b []byte) string {
	if len(b) > 1500 {
		b = b[len(b)-1500:]
	}
	return string(b)
}

// traceResult is what one server did in the kernel over one fio job:
// counted by perf stat, which barely slows it, and broken down by syscall
// with strace -c, which slows it a lot.
type traceResult struct {
	server string
	job    workload
	perf   *perfCounts // nil when perf is missing or failed
	ios    int64       // I/Os of the strace run
	total  syscallCount
	top    []syscallCount
	err    error // of the strace run
}

// perfCounts are the counters of a perf stat run, with the I/Os it covered.
type perfCounts struct {
	ios      int64
	syscalls float64
	switches float64
	cpuMs    float64 // task-clock
}

// traceSyscalls measures each server's system calls per I/O during short
// fio runs: the totals with perf stat's syscall tracepoint and context
// switch counters, then, in a second run, the breakdown by syscall with
// strace -c. Under strace the server is much slower and requests pile up,
// so calls that batch or poll (read, epoll, futex, nanosleep) come at
// other rates than untraced; the perf figures are the ones to compare,
// strace says which calls they are.
func (b *bench) traceSyscalls(ctx context.Context) {
	for _, s := range b.servers {
		for _, w := range []workload{wRandRead1, wRandRead32, wRandWrite1, wRandWrit32} {
			if ctx.Err() != nil {
				return
			}
			tr := traceResult{server: s.name, job: w}
			var msg []string
			if b.set.perf {
				p, err := b.perfOne(ctx, w, s)
				if err != nil {
					b.fail("perf stat %s %s: %v", s.name, w.title, err)
				} else {
					tr.perf = p
					msg = append(msg, fmt.Sprintf("perf: %.2f syscalls, %.2f context switches per I/O", p.syscalls/float64(p.ios), p.switches/float64(p.ios)))
				}
			}
			if b.set.strace {
				b.straceOne(ctx, w, s, &tr)
				if tr.err != nil {
					b.fail("strace %s %s: %v", s.name, w.title, tr.err)
				} else {
					msg = append(msg, fmt.Sprintf("strace: %.2f syscalls per I/O", float64(tr.total.calls)/float64(tr.ios)))
				}
			}
			b.progress("syscalls %-10s %-28s %s", s.name, w.title, strings.Join(msg, "; "))
			b.traces = append(b.traces, tr)
		}
	}
}

// perfOne counts during one fio run under perf stat -p, which follows the
// server's threads and the children it forks.
func (b *bench) perfOne(ctx context.Context, w workload, s *server) (*perfCounts, error) {
	out := filepath.Join(b.dir, "perf.csv")
	os.Remove(out)
	prefix := []string{"perf", "stat", "-x,", "-o", out, "-e", perfEvents, "-p", strconv.Itoa(s.pid), "--"}
	r, _, err := b.runFioJob(ctx, *w.fio, s, b.set.syscallTime, prefix)
	if err != nil {
		return nil, err
	}
	csv, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	c, err := parsePerfStat(csv)
	if err != nil {
		return nil, err
	}
	p := &perfCounts{ios: r.ios, syscalls: c[evSyscalls], switches: c[evSwitches], cpuMs: c[evTaskClock]}
	return p, nil
}

func (b *bench) straceOne(ctx context.Context, w workload, s *server, tr *traceResult) {
	out := filepath.Join(b.dir, "strace.txt")
	os.Remove(out)
	st := exec.Command("strace", "-c", "-f", "-q", "-o", out, "-p", strconv.Itoa(s.pid))
	st.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr strings.Builder
	st.Stderr = &stderr
	if err := st.Start(); err != nil {
		tr.err = err
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for !threadsTraced(s.pid) {
		if time.Now().After(deadline) {
			st.Process.Kill()
			st.Wait()
			tr.err = fmt.Errorf("strace did not attach to pid %d within 10s: %s", s.pid, stderr.String())
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	r, _, err := b.fio(ctx, *w.fio, s, b.set.syscallTime)
	st.Process.Signal(os.Interrupt)
	werr := st.Wait()
	if err != nil {
		tr.err = err
		return
	}
	if werr != nil && !strings.Contains(werr.Error(), "interrupt") {
		tr.err = fmt.Errorf("strace: %v: %s", werr, stderr.String())
		return
	}
	summary, err := os.ReadFile(out)
	if err != nil {
		tr.err = err
		return
	}
	tr.total, tr.top, tr.err = parseStraceSummary(summary)
	tr.ios = r.ios
}

// stopServers stops the benchmarked servers, to leave the machine to the
// footprint measurement.
func (b *bench) stopServers() {
	for _, s := range b.servers {
		s.stop()
	}
}

// serverNames returns the names of the measured servers in report order.
func (b *bench) serverNames() []string {
	var out []string
	for _, name := range allServers {
		if slices.Contains(b.set.servers, name) {
			out = append(out, name)
		}
	}
	return out
}

// multiConn reports whether the named server advertised NBD_FLAG_CAN_MULTI_CONN.
func (b *bench) multiConn(name string) bool {
	for _, s := range b.servers {
		if s.name == name {
			return s.info.multiConn()
		}
	}
	return false
}
