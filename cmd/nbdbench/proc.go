//go:build linux

package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, the unit of the times in /proc/PID/stat. The kernel
// exports them in USER_HZ, which is 100 on every architecture Go supports
// on Linux, whatever CONFIG_HZ is; reading sysconf(_SC_CLK_TCK) would need
// cgo for a constant.
const clockTick = 10 * time.Millisecond

var (
	errStatFormat   = errors.New("nbdbench: malformed /proc/PID/stat")
	errStatusFormat = errors.New("nbdbench: malformed /proc/PID/status")
)

// procStat is the part of /proc/PID/stat the bench uses.
type procStat struct {
	pid, ppid int
	state     byte
	// utime and stime are the process's own CPU time, summed over all
	// its threads, live and exited; cutime and cstime are those of the
	// children it has waited for.
	utime, stime, cutime, cstime int64 // clock ticks
}

// self is the process's own CPU time.
func (s procStat) self() time.Duration { return time.Duration(s.utime+s.stime) * clockTick }

// reaped is the CPU time of the children the process has waited for.
func (s procStat) reaped() time.Duration { return time.Duration(s.cutime+s.cstime) * clockTick }

// parseStat decodes one /proc/PID/stat line. The command name, field 2, is
// in parentheses and may itself contain spaces and parentheses, so the
// fields after it are counted from the last ')'.
func parseStat(b []byte) (procStat, error) {
	var s procStat
	open := bytes.IndexByte(b, '(')
	end := bytes.LastIndexByte(b, ')')
	if open < 1 || end < open {
		return s, fmt.Errorf("%w: no (comm)", errStatFormat)
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:open])))
	if err != nil {
		return s, fmt.Errorf("%w: pid %q", errStatFormat, b[:open])
	}
	s.pid = pid
	// rest[0] is field 3 (state); field n is rest[n-3].
	rest := strings.Fields(string(b[end+1:]))
	if len(rest) < 15 {
		return s, fmt.Errorf("%w: %d fields after (comm), want at least 15", errStatFormat, len(rest))
	}
	if len(rest[0]) != 1 {
		return s, fmt.Errorf("%w: state %q", errStatFormat, rest[0])
	}
	s.state = rest[0][0]
	nums := []struct {
		field int
		dst   *int64
	}{{14, &s.utime}, {15, &s.stime}, {16, &s.cutime}, {17, &s.cstime}}
	for _, n := range nums {
		v, err := strconv.ParseInt(rest[n.field-3], 10, 64)
		if err != nil || v < 0 {
			return s, fmt.Errorf("%w: field %d is %q", errStatFormat, n.field, rest[n.field-3])
		}
		*n.dst = v
	}
	ppid, err := strconv.Atoi(rest[4-3])
	if err != nil {
		return s, fmt.Errorf("%w: ppid %q", errStatFormat, rest[1])
	}
	s.ppid = ppid
	return s, nil
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

// treeCPU sums the CPU time of a process tree as the stats give it: each
// process's own time and its reaped children's, plus, for live children,
// the same sum, recursively. A child is counted once: while it lives in the
// walk, after it is reaped in its parent's cutime and cstime. stats is every
// process on the system.
func treeCPU(root int, stats []procStat) (time.Duration, error) {
	kids := make(map[int][]procStat)
	var top *procStat
	for i := range stats {
		kids[stats[i].ppid] = append(kids[stats[i].ppid], stats[i])
		if stats[i].pid == root {
			top = &stats[i]
		}
	}
	if top == nil {
		return 0, fmt.Errorf("process %d is gone", root)
	}
	var walk func(s procStat, depth int) time.Duration
	walk = func(s procStat, depth int) time.Duration {
		d := s.self() + s.reaped()
		if depth < 8 {
			for _, k := range kids[s.pid] {
				d += walk(k, depth+1)
			}
		}
		return d
	}
	return walk(*top, 0), nil
}

// allStats reads /proc/*/stat. Processes that end while it reads are
// skipped.
func allStats() ([]procStat, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []procStat
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		s, err := readStat(pid)
		if err != nil {
			continue
		}
		out = append(out, s)
	}
	return out, nil
}

// processCPU is the CPU time of pid and all its descendants so far.
func processCPU(pid int) (time.Duration, error) {
	stats, err := allStats()
	if err != nil {
		return 0, err
	}
	return treeCPU(pid, stats)
}

// childrenOf lists the live children of pid.
func childrenOf(pid int) []int {
	stats, _ := allStats()
	var out []int
	for _, s := range stats {
		if s.ppid == pid {
			out = append(out, s.pid)
		}
	}
	return out
}

// parseVmRSS returns VmRSS from /proc/PID/status, in bytes.
func parseVmRSS(b []byte) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != "VmRSS" {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("%w: VmRSS %q", errStatusFormat, v)
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%w: VmRSS %q", errStatusFormat, v)
		}
		return n << 10, nil
	}
	return 0, fmt.Errorf("%w: no VmRSS (a kernel thread, or a zombie?)", errStatusFormat)
}

func readRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return parseVmRSS(b)
}

// tracedBy returns TracerPid from /proc/PID/status: nonzero once a tracer
// such as strace has attached.
func tracedBy(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "TracerPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// threadsTraced reports whether every thread of pid has a tracer.
func threadsTraced(pid int) bool {
	tids, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	if err != nil || len(tids) == 0 {
		return false
	}
	for _, t := range tids {
		tid, err := strconv.Atoi(filepath.Base(t))
		if err != nil || tracedBy(tid) == 0 {
			return false
		}
	}
	return true
}

// listening reports whether /proc/net/tcp or tcp6 content b shows a socket
// in LISTEN state on port. Matching the port alone sidesteps the byte order
// of the address column, which is the host's.
func listening(b []byte, port int) bool {
	want := fmt.Sprintf(":%04X", port)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// sl local_address rem_address st ...
		if len(f) < 4 || f[0] == "sl" {
			continue
		}
		if strings.HasSuffix(f[1], want) && f[3] == "0A" {
			return true
		}
	}
	return false
}

// portListening checks the kernel's socket tables, so a readiness check
// opens no connection that the server would count, log or fork for.
func portListening(port int) bool {
	for _, p := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		if b, err := os.ReadFile(p); err == nil && listening(b, port) {
			return true
		}
	}
	return false
}
