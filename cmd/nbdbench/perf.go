//go:build linux

package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// The perf stat events: every system call entry (a tracepoint, so counting
// costs little), context switches, and CPU time.
const (
	evSyscalls  = "raw_syscalls:sys_enter"
	evSwitches  = "context-switches"
	evTaskClock = "task-clock" // milliseconds
	perfEvents  = evSyscalls + "," + evSwitches + "," + evTaskClock
)

var errPerfStat = errors.New("nbdbench: unusable perf stat output")

// parsePerfStat reads perf stat -x, output: one line per event, value,
// unit, event name, then run time and other columns. Comment lines start
// with #. Every event of perfEvents must be there with a value.
func parsePerfStat(b []byte) (map[string]float64, error) {
	out := make(map[string]float64)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ",")
		if len(f) < 3 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil || v < 0 {
			// "<not counted>" or "<not supported>"
			return nil, fmt.Errorf("%w: %s is %q", errPerfStat, f[2], f[0])
		}
		out[f[2]] = v
	}
	for ev := range strings.SplitSeq(perfEvents, ",") {
		if _, ok := out[ev]; !ok {
			return nil, fmt.Errorf("%w: no %s", errPerfStat, ev)
		}
	}
	return out, nil
}
