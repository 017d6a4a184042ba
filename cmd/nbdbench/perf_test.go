//go:build linux

package main

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestParsePerfStatFile(t *testing.T) {
	// perf stat -x, -e perfEvents -p PID against nbdkit during a fio run.
	b, err := os.ReadFile("testdata/perf-stat-nbdkit.csv")
	if err != nil {
		t.Fatal(err)
	}
	got, err := parsePerfStat(b)
	if err != nil {
		t.Fatalf("parsePerfStat error = %v", err)
	}
	want := map[string]float64{evSyscalls: 36425, evSwitches: 12920, evTaskClock: 343.71}
	for ev, v := range want {
		if !same(got[ev], v) {
			t.Errorf("parsePerfStat: %s = %v, want %v", ev, got[ev], v)
		}
	}
}

func TestParsePerfStat(t *testing.T) {
	const all = "1,,raw_syscalls:sys_enter,5,100.00,,\n2,,context-switches,5,100.00,,\n3.5,msec,task-clock,5,100.00,,\n"
	tests := []struct {
		name string
		in   string
		err  error
	}{
		{"all events", all, nil},
		{"comments and blank lines", "# started on a day\n\n" + all, nil},
		{"not counted", "<not counted>,,raw_syscalls:sys_enter,0,0.00,,\n2,,context-switches,5,100.00,,\n3.5,msec,task-clock,5,100.00,,\n", errPerfStat},
		{"not supported", "<not supported>,,raw_syscalls:sys_enter,0,0.00,,\n", errPerfStat},
		{"an event missing", "2,,context-switches,5,100.00,,\n3.5,msec,task-clock,5,100.00,,\n", errPerfStat},
		{"empty", "", errPerfStat},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parsePerfStat([]byte(tt.in))
			if !errors.Is(err, tt.err) {
				t.Fatalf("parsePerfStat error = %v, want %v", err, tt.err)
			}
			if tt.err == nil && (got[evSyscalls] != 1 || got[evSwitches] != 2 || got[evTaskClock] != 3.5) {
				t.Errorf("parsePerfStat = %v", got)
			}
		})
	}
}

func TestTraceTable(t *testing.T) {
	var b strings.Builder
	traceTable(&b, []traceResult{
		{
			server: srvBoardnbd, job: wRandRead1,
			perf: &perfCounts{ios: 1000, syscalls: 9120, switches: 3730, cpuMs: 59.5},
			ios:  500, total: syscallCount{calls: 5000},
			top: []syscallCount{{"lseek", 1000, 1.2}, {"pread64", 500, 0.001}},
		},
		{server: srvNbdkit, job: wRandRead1, err: errStraceSummary},
	})
	want := `| server   | workload                  | syscalls/I/O (perf) | context switches/I/O (perf) | CPU µs/I/O (perf) | syscalls/I/O (strace) | most frequent under strace: calls/I/O (µs per call) |
| -------- | ------------------------- | ------------------- | --------------------------- | ----------------- | --------------------- | --------------------------------------------------- |
| boardnbd | 4k random read, QD1 (fio) | 9.12                | 3.73                        | 59.5              | 10.00                 | lseek 2.00 (1200 µs), pread64 1.00 (2 µs)           |
| nbdkit   | 4k random read, QD1 (fio) | –                   | –                           | –                 | –                     | –                                                   |
`
	if b.String() != want {
		t.Errorf("traceTable wrote\n%s\nwant\n%s", b.String(), want)
	}
}
