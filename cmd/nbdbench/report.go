//go:build linux

package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

const dash = "–" // a figure that is missing

// formatValue prints a figure with about three significant digits, and
// whole numbers from 100 up.
func formatValue(v float64) string {
	switch a := math.Abs(v); {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return dash
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

func formatRatio(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return dash
	}
	return fmt.Sprintf("%.2f×", v)
}

func formatBytes(n int64) string {
	switch a := max(n, -n); {
	case a >= 10*mib:
		return fmt.Sprintf("%.1f MiB", float64(n)/mib)
	case a >= mib:
		return fmt.Sprintf("%.2f MiB", float64(n)/mib)
	default:
		return fmt.Sprintf("%.1f KiB", float64(n)/1024)
	}
}

// mdTable writes a markdown table with padded columns, readable as text.
func mdTable(w io.Writer, header []string, rows [][]string) {
	width := make([]int, len(header))
	for i, h := range header {
		width[i] = max(3, utf8.RuneCountInString(h))
	}
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	line := func(cells []string) {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range cells {
			b.WriteString(" ")
			b.WriteString(c)
			b.WriteString(strings.Repeat(" ", width[i]-utf8.RuneCountInString(c)))
			b.WriteString(" |")
		}
		fmt.Fprintln(w, b.String())
	}
	line(header)
	sep := make([]string, len(header))
	for i := range sep {
		sep[i] = strings.Repeat("-", width[i])
	}
	line(sep)
	for _, r := range rows {
		line(r)
	}
}

// resultTable lays out the medians: a row per workload and figure, a
// column per server, then the best peer and boardnbd's ratios to it and to
// nbdkit. noMulti names the servers that did not advertise multi-conn;
// their multi-connection copies ran on one connection and are marked †.
func resultTable(w io.Writer, servers []string, wls []workload, res *results, rounds int, noMulti map[string]bool) {
	header := []string{"workload", "figure"}
	header = append(header, servers...)
	hasB := slices.Contains(servers, srvBoardnbd)
	hasK := slices.Contains(servers, srvNbdkit) && hasB
	hasPeer := hasB && len(servers) > 1
	if hasPeer {
		header = append(header, "best peer", "boardnbd ÷ best peer")
	}
	if hasK {
		header = append(header, "boardnbd ÷ nbdkit")
	}
	if rounds > 1 {
		header = append(header, "spread (largest)")
	}
	var rows [][]string
	for _, wl := range wls {
		for i, m := range wl.metrics() {
			title := ""
			if i == 0 {
				title = wl.title
			}
			row := []string{title, m.name}
			worst, worstAt := math.NaN(), ""
			for _, s := range servers {
				cell := formatValue(res.median(wl.key, m, s))
				if wl.copy != nil && wl.copy.conns > 1 && noMulti[s] {
					cell += " †"
				}
				if _, ok := res.partial[wl.key][s]; ok {
					cell += " ‡"
				}
				row = append(row, cell)
				if sp := spread(res.samples(wl.key, m, s)); !math.IsNaN(sp) && (math.IsNaN(worst) || sp > worst) {
					worst, worstAt = sp, s
				}
			}
			b := res.median(wl.key, m, srvBoardnbd)
			if m.client {
				b = math.NaN() // no ratios: the client is the same for every server
			}
			if hasPeer {
				name, v := res.bestPeer(wl.key, m, servers)
				if name == "" || m.client {
					row = append(row, dash, dash)
				} else {
					row = append(row, name, formatRatio(ratio(b, v)))
				}
			}
			if hasK {
				row = append(row, formatRatio(ratio(b, res.median(wl.key, m, srvNbdkit))))
			}
			if rounds > 1 {
				if math.IsNaN(worst) {
					row = append(row, dash)
				} else if worst == 0 {
					row = append(row, "0%")
				} else {
					row = append(row, fmt.Sprintf("%.0f%% %s", 100*worst, worstAt))
				}
			}
			rows = append(rows, row)
		}
	}
	mdTable(w, header, rows)
}

// verdict is one target checked against the figures.
type verdict struct {
	target string
	detail string
	state  string // PASS, FAIL, or "n/a"
}

func passFail(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

// judge checks the targets. A figure that is missing, or a peer
// that was not measured, makes the target n/a rather than a pass.
func judge(res *results, servers []string, f *footprint) []verdict {
	var out []verdict
	has := func(s string) bool { return slices.Contains(servers, s) }
	cmpTo := func(target string, wl workload, m metric, peer string, factor float64) {
		b := res.median(wl.key, m, srvBoardnbd)
		var p float64
		if peer == "" {
			peer, p = res.bestPeer(wl.key, m, servers)
		} else if has(peer) {
			p = res.median(wl.key, m, peer)
		} else {
			p = math.NaN()
		}
		r := ratio(b, p)
		v := verdict{target: target, state: "n/a"}
		if !math.IsNaN(r) && has(srvBoardnbd) {
			v.detail = fmt.Sprintf("%s %s vs %s %s (%s", formatValue(b), m.name, peer, formatValue(p), formatRatio(r))
			if lo, hi := pairedRange(res.samples(wl.key, m, srvBoardnbd), res.samples(wl.key, m, peer)); !math.IsNaN(lo) {
				v.detail += fmt.Sprintf("; per round %s–%s", formatRatio(lo), formatRatio(hi))
			}
			v.detail += ")"
			if m.higher {
				v.state = passFail(r >= factor)
			} else {
				v.state = passFail(r <= factor)
			}
			if overlap(res.samples(wl.key, m, srvBoardnbd), res.samples(wl.key, m, peer), factor) {
				v.state += " (rounds overlap)"
			}
		}
		out = append(out, v)
	}
	for _, wl := range []workload{wSeqRead1, wSeqRead4, wSeqWrite1, wSeqWrite4} {
		cmpTo(wl.title+": MiB/s ≥ best peer", wl, mMiBs, "", 1)
	}
	for _, wl := range []workload{wRandRead32, wRandWrit32} {
		cmpTo(wl.title+": IOPS ≥ 1.2 × nbdkit", wl, mIOPS, srvNbdkit, 1.2)
	}
	for _, wl := range []workload{wRandRead1, wRandRead32, wRandWrite1, wRandWrit32} {
		cmpTo(wl.title+": server CPU per I/O ≤ nbdkit", wl, mCPUk, srvNbdkit, 1)
	}
	for _, wl := range []workload{wRandRead1, wRandWrite1} {
		cmpTo(wl.title+": p99 latency ≤ nbdkit", wl, mP99, srvNbdkit, 1)
	}
	if f == nil {
		return out
	}
	if f.idle > 0 {
		out = append(out, verdict{
			target: fmt.Sprintf("idle RSS with %d exports < 12 MiB", f.exports),
			detail: formatBytes(f.idle),
			state:  passFail(f.idle < 12*mib),
		})
	}
	for _, c := range f.conns {
		out = append(out, verdict{
			target: fmt.Sprintf("RSS per idle connection (%d connections) < 64 KiB", c.n),
			detail: formatBytes(int64(f.perConn(c))),
			state:  passFail(f.perConn(c) < 64<<10),
		})
	}
	if n := len(f.conns); n > 0 {
		c := f.conns[n-1]
		bound := 12*mib + int64(c.n)*64<<10
		out = append(out, verdict{
			target: fmt.Sprintf("RSS with %d idle connections ≤ 12 MiB + %d × 64 KiB = %s", c.n, c.n, formatBytes(bound)),
			detail: formatBytes(c.rss),
			state:  passFail(c.rss <= bound),
		})
	}
	return out
}

// overlap reports whether the rounds of a and of b scaled by factor cover
// a common range, so that the medians' order may be noise. It needs two
// rounds of each.
func overlap(a, b []float64, factor float64) bool {
	a = slices.DeleteFunc(slices.Clone(a), math.IsNaN)
	b = slices.DeleteFunc(slices.Clone(b), math.IsNaN)
	if len(a) < 2 || len(b) < 2 {
		return false
	}
	return slices.Max(a) >= factor*slices.Min(b) && slices.Min(a) <= factor*slices.Max(b)
}

// pairedRange is the least and the greatest ratio of a[i] to b[i], the
// two servers' figures of the same round, which ran seconds apart, one
// after the other, where the medians draw on rounds minutes apart: a
// machine whose speed drifts moves both figures of a pair alike. NaN if
// fewer than two rounds have both figures.
func pairedRange(a, b []float64) (lo, hi float64) {
	var rs []float64
	for i := range min(len(a), len(b)) {
		if r := ratio(a[i], b[i]); !math.IsNaN(r) {
			rs = append(rs, r)
		}
	}
	if len(rs) < 2 {
		return math.NaN(), math.NaN()
	}
	return slices.Min(rs), slices.Max(rs)
}

// losses lists the figures where a peer beats boardnbd.
func losses(res *results, servers []string, wls []workload) []string {
	var out []string
	for _, wl := range wls {
		for _, m := range wl.metrics() {
			if m.client {
				continue
			}
			b := res.median(wl.key, m, srvBoardnbd)
			name, p := res.bestPeer(wl.key, m, servers)
			r := ratio(b, p)
			if math.IsNaN(r) {
				continue
			}
			if (m.higher && r < 1) || (!m.higher && r > 1) {
				out = append(out, fmt.Sprintf("%s, %s: boardnbd %s, %s %s (%s)",
					wl.title, m.name, formatValue(b), name, formatValue(p), formatRatio(r)))
			}
		}
	}
	return out
}

// perCall is the system time of one call of c, in µs.
func perCall(c syscallCount) float64 {
	if c.calls == 0 {
		return 0
	}
	return c.seconds * 1e6 / float64(c.calls)
}

// traceTable shows system calls per I/O: perf stat's counts, then
// strace's breakdown.
func traceTable(w io.Writer, traces []traceResult) {
	perIO := func(v float64, ios int64) string { return fmt.Sprintf("%.2f", v/float64(ios)) }
	var rows [][]string
	for _, t := range traces {
		row := []string{t.server, t.job.title}
		if p := t.perf; p != nil && p.ios > 0 {
			row = append(row, perIO(p.syscalls, p.ios), perIO(p.switches, p.ios), fmt.Sprintf("%.1f", p.cpuMs*1000/float64(p.ios)))
		} else {
			row = append(row, dash, dash, dash)
		}
		if t.err != nil || t.ios == 0 {
			row = append(row, dash, dash)
		} else {
			var top []string
			for _, c := range t.top[:min(5, len(t.top))] {
				top = append(top, fmt.Sprintf("%s %.2f (%.0f µs)", c.name, float64(c.calls)/float64(t.ios), perCall(c)))
			}
			row = append(row, perIO(float64(t.total.calls), t.ios), strings.Join(top, ", "))
		}
		rows = append(rows, row)
	}
	mdTable(w, []string{"server", "workload", "syscalls/I/O (perf)", "context switches/I/O (perf)", "CPU µs/I/O (perf)",
		"syscalls/I/O (strace)", "most frequent under strace: calls/I/O (µs per call)"}, rows)
}

// footprintTable shows boardnbd's size and memory.
func footprintTable(w io.Writer, f *footprint) {
	rows := [][]string{
		{"binary, static and stripped (`CGO_ENABLED=0 go build -trimpath -ldflags '-s -w'`)", fmt.Sprintf("%s (%d bytes)", formatBytes(f.binSize), f.binSize)},
	}
	if f.idle > 0 {
		rows = append(rows, []string{fmt.Sprintf("RSS, %d exports, no client", f.exports), formatBytes(f.idle)})
	}
	for _, c := range f.conns {
		rows = append(rows,
			[]string{fmt.Sprintf("RSS, %d idle connections (after NBD_OPT_GO)", c.n), formatBytes(c.rss)},
			[]string{fmt.Sprintf("  per connection, (RSS_%d − RSS_0) / %d", c.n, c.n), formatBytes(int64(f.perConn(c)))})
	}
	if f.nofile != 0 {
		rows = append(rows, []string{"server RLIMIT_NOFILE (soft)", fmt.Sprint(f.nofile)})
	}
	mdTable(w, []string{"boardnbd footprint", "value"}, rows)
}

// machine describes the machine for the report.
func machine() []string {
	cpu := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				var kb int64
				fmt.Sscan(strings.TrimSpace(v), &kb)
				mem = fmt.Sprintf(", %.1f GiB RAM", float64(kb)/(1<<20))
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return []string{
		fmt.Sprintf("CPU: %s, %d cores online%s", cpu, runtime.NumCPU(), mem),
		fmt.Sprintf("kernel: Linux %s %s; %s", strings.TrimSpace(string(kernel)), runtime.GOARCH, runtime.Version()),
		"date: " + time.Now().UTC().Format("2006-01-02 15:04 UTC"),
	}
}

// loadavg is the 1, 5 and 15 minute load average.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// toolVersion is the first line a tool prints about its version.
func toolVersion(name string, args ...string) string {
	out, _ := exec.Command(name, args...).CombinedOutput()
	for line := range strings.SplitSeq(string(out), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			return line
		}
	}
	return name + ": unknown version"
}

// report writes the whole markdown report.
func (b *bench) report(w io.Writer, cmdline, loadStart string, took time.Duration) {
	servers := b.serverNames()
	fmt.Fprintf(w, "# nbdbench: %s\n\n", strings.Join(servers, " vs "))
	fmt.Fprintf(w, "Command: `%s`\n\n", cmdline)
	for _, l := range machine() {
		fmt.Fprintf(w, "- %s\n", l)
	}
	fmt.Fprintf(w, "- load average (1/5/15 min): %s at the start, %s at the end; run took %s\n",
		loadStart, loadavg(), took.Round(time.Second))
	fmt.Fprintf(w, "- tools: %s; %s; %s; %s; %s\n",
		toolVersion("fio", "--version"), toolVersion("nbdcopy", "--version"),
		toolVersion("nbdkit", "--version"), toolVersion("nbd-server", "-V"), toolVersion("qemu-nbd", "--version"))
	fmt.Fprintf(w, "- method: %d round(s); in each, every workload runs on every server in turn, the first server rotating per round; "+
		"figures are medians over rounds. Images of %d MiB, one per server, in tmpfs (%s); clients and servers on 127.0.0.1. "+
		"fio runs for %s per workload, no ramp; nbdcopy copies the whole image with --no-extents.\n",
		b.set.rounds, b.set.imageMiB, b.dir, b.set.fioTime)
	if c := b.set.cpus; len(c.server) > 0 {
		cores := "one core"
		if n := len(c.server); n > 1 {
			cores = fmt.Sprintf("%d cores", n)
		}
		fmt.Fprintf(w, "- CPUs: every server pinned to CPU %s and the clients (fio, nbdcopy) to CPU %s with taskset, "+
			"as on a board with %s whose clients are other machines.\n", cpuList(c.server), cpuList(c.client), cores)
	} else {
		fmt.Fprintln(w, "- CPUs: not pinned; clients and servers share every core.")
	}
	if q := b.quota; q != nil {
		fmt.Fprintf(w, "- CPU quota: %s. Over the whole run the kernel held them back in %d of the %d periods in which they ran.\n",
			q.describe(), b.held.throttled, b.held.periods)
	}
	fmt.Fprintln(w, "- server CPU: utime+stime from /proc/PID/stat of the server process (all its threads) plus its child processes "+
		"(nbd-server forks one per connection: live ones are read directly, reaped ones through the parent's cutime+cstime), "+
		"in 10 ms ticks, over the client's run.")
	fmt.Fprintln(w, "- fio CPU: fio's own usr_cpu + sys_cpu for its one job, in % of one core. Near 100% the client, "+
		"not the server, limits that workload's figures, and the servers' CPU columns compare them better than their IOPS.")
	fmt.Fprintln(w, "- nbdcopy CPU: nbdcopy's user and system time (all its threads, from the kernel's accounting when it exits) "+
		"over its wall time, in % of one core; with more than one core for the clients it may pass 100. "+
		"Near the client cores' limit, the client limits that workload.")
	if b.set.rounds > 1 {
		fmt.Fprintln(w, "- spread: (max − min) / median of a figure over the rounds, for the server where it is largest. "+
			"Other work on the machine shows up here. A target verdict says \"rounds overlap\" when the two servers' rounds share a range, so that their order may be noise; "+
			"its \"per round\" range is boardnbd's figure over the peer's from the same round, run seconds apart, which drift in the machine's speed moves alike.")
	}
	fmt.Fprintln(w)

	fmt.Fprintf(w, "## Throughput, latency and server CPU (median of %d)\n\n", b.set.rounds)
	noMulti := map[string]bool{}
	var mc []string
	for _, s := range servers {
		noMulti[s] = !b.multiConn(s)
		yes := "yes"
		if noMulti[s] {
			yes = "no"
		}
		mc = append(mc, s+" "+yes)
	}
	resultTable(w, servers, b.set.workloads, b.res, b.set.rounds, noMulti)
	fmt.Fprintf(w, "\nNBD_FLAG_CAN_MULTI_CONN advertised: %s. nbdcopy --connections=4 opens 4 connections only to a server that advertises it", strings.Join(mc, ", "))
	if slices.ContainsFunc(servers, func(s string) bool { return noMulti[s] }) {
		fmt.Fprint(w, "; † marks figures where it fell back to 1 connection")
	}
	fmt.Fprintln(w, ".")
	for _, wl := range b.set.workloads {
		for _, srv := range servers {
			if pct, ok := b.res.partial[wl.key][srv]; ok {
				fmt.Fprintf(w, "‡ %s, %s: nbdcopy did not finish within %s (-copy-timeout) in some round (least copied: %d%%); its figures are over the part copied.\n",
					wl.title, srv, b.set.copyTimeout, pct)
			}
		}
	}
	fmt.Fprintln(w)

	if len(b.idleRSS) > 0 {
		fmt.Fprintf(w, "## Idle RSS, one export, no client\n\n")
		var row []string
		for _, s := range servers {
			if v, ok := b.idleRSS[s]; ok {
				row = append(row, formatBytes(v))
			} else {
				row = append(row, dash)
			}
		}
		mdTable(w, servers, [][]string{row})
		fmt.Fprintln(w, "\nnbd-server's figure is its listening process only; each connection adds a process.")
		fmt.Fprintln(w)
	}

	if len(b.traces) > 0 {
		fmt.Fprintf(w, "## System calls per I/O (fio runs of %s: `perf stat -p PID`, then `strace -c -f -p PID`)\n\n", b.set.syscallTime)
		traceTable(w, b.traces)
		fmt.Fprintln(w, "\nCalls by every thread and child process of the server, divided by the I/Os fio completed. "+
			"perf counts the syscall tracepoint and context switches and barely slows the server, so its figures compare. "+
			"strace slows the server several times, so requests pile up and batch and runtimes poll differently: its per-I/O counts of read, epoll, futex and nanosleep differ from untraced ones; "+
			"it is there to say which calls they are. Its µs per call include blocking (futex, epoll_pwait) and tracing overhead, "+
			"but show calls that do real work, such as lseek on tmpfs.")
		fmt.Fprintln(w)
	}

	if b.foot != nil && b.foot.err == nil {
		fmt.Fprintf(w, "## boardnbd footprint\n\n")
		footprintTable(w, b.foot)
		fmt.Fprintf(w, "\nRSS is VmRSS from /proc/PID/status, %s after the last change. Idle connections are raw TCP connections that completed NBD_OPT_GO and then send nothing.\n\n", b.set.settle)
	}

	if slices.Contains(servers, srvBoardnbd) {
		fmt.Fprintf(w, "## Targets\n\n")
		var rows [][]string
		for _, v := range judge(b.res, servers, b.foot) {
			rows = append(rows, []string{v.target, v.detail, v.state})
		}
		mdTable(w, []string{"target", "figures", "verdict"}, rows)
		fmt.Fprintln(w)
		if l := losses(b.res, servers, b.set.workloads); len(l) > 0 {
			fmt.Fprintf(w, "Where a peer beats boardnbd (medians):\n\n")
			for _, s := range l {
				fmt.Fprintf(w, "- %s\n", s)
			}
			fmt.Fprintln(w)
		}
	}

	fmt.Fprintf(w, "## Server setups\n\n")
	for _, s := range servers {
		fmt.Fprintf(w, "- %s: %s\n", s, serverSetup[s])
	}
	for _, n := range b.notes {
		fmt.Fprintf(w, "- %s\n", n)
	}
	if len(b.failures) > 0 {
		fmt.Fprintf(w, "\n## Failures\n\n")
		for _, f := range b.failures {
			fmt.Fprintf(w, "- %s\n", strings.ReplaceAll(f, "\n", "\n  "))
		}
	}
}
