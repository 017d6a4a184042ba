//go:build linux

package main

import (
	"errors"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want procStat
		err  error
	}{
		{
			name: "nbdkit",
			in:   "4242 (nbdkit) S 1 4242 4242 0 -1 4194560 1033 0 0 0 250 75 3 4 20 0 17 0 123456 221184000 1200 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
			want: procStat{pid: 4242, ppid: 1, state: 'S', utime: 250, stime: 75, cutime: 3, cstime: 4},
		},
		{
			name: "comm with spaces and parentheses",
			in:   "77 (a (b) c) R 76 77 77 0 -1 0 0 0 0 0 1 2 30 40 20 0 1 0 9 0 0 0",
			want: procStat{pid: 77, ppid: 76, state: 'R', utime: 1, stime: 2, cutime: 30, cstime: 40},
		},
		{
			name: "zombie",
			in:   "9 (nbd-server) Z 8 8 8 0 -1 4227084 0 0 0 0 12 34 0 0 20 0 1 0 5 0 0",
			want: procStat{pid: 9, ppid: 8, state: 'Z', utime: 12, stime: 34},
		},
		{name: "empty", in: "", err: errStatFormat},
		{name: "no comm", in: "1 init S 0 1 1", err: errStatFormat},
		{name: "bad pid", in: "x (a) S 1 1 1 0 -1 0 0 0 0 0 1 2 3 4 20 0 1 0 9", err: errStatFormat},
		{name: "short", in: "1 (a) S 0 1 1 0 -1 0 0 0 0 0 1 2", err: errStatFormat},
		{name: "negative utime", in: "1 (a) S 0 1 1 0 -1 0 0 0 0 0 -1 2 3 4 20 0 1 0 9", err: errStatFormat},
		{name: "text in stime", in: "1 (a) S 0 1 1 0 -1 0 0 0 0 0 1 x 3 4 20 0 1 0 9", err: errStatFormat},
		{name: "long state", in: "1 (a) SS 0 1 1 0 -1 0 0 0 0 0 1 2 3 4 20 0 1 0 9", err: errStatFormat},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat([]byte(tt.in))
			if !errors.Is(err, tt.err) {
				t.Fatalf("parseStat(%q) error = %v, want %v", tt.in, err, tt.err)
			}
			if tt.err == nil && got != tt.want {
				t.Errorf("parseStat(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestTreeCPU(t *testing.T) {
	tick := clockTick
	// 10 is the server; 11 and 12 its per-connection children, 13 a
	// grandchild; 20 is someone else's process.
	procs := []procStat{
		{pid: 10, ppid: 1, utime: 100, stime: 50, cutime: 7, cstime: 3},
		{pid: 11, ppid: 10, utime: 20, stime: 10},
		{pid: 12, ppid: 10, state: 'Z', utime: 5, stime: 5},
		{pid: 13, ppid: 11, utime: 1, stime: 1, cutime: 2},
		{pid: 20, ppid: 1, utime: 1000, stime: 1000},
	}
	tests := []struct {
		name string
		root int
		want time.Duration
		err  bool
	}{
		{"whole tree", 10, (150 + 10 + 30 + 10 + 4) * tick, false},
		{"a child", 11, (30 + 4) * tick, false},
		{"a leaf", 20, 2000 * tick, false},
		{"gone", 99, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := treeCPU(tt.root, procs)
			if (err != nil) != tt.err {
				t.Fatalf("treeCPU(%d) error = %v, want error %v", tt.root, err, tt.err)
			}
			if got != tt.want {
				t.Errorf("treeCPU(%d) = %v, want %v", tt.root, got, tt.want)
			}
		})
	}
}

func TestParseVmRSS(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want int64
		err  bool
	}{
		{"status", "Name:\tboardnbd\nVmPeak:\t 1236000 kB\nVmRSS:\t    7212 kB\nRssAnon:\t 3000 kB\n", 7212 << 10, false},
		{"zero", "VmRSS:\t0 kB\n", 0, false},
		{"kernel thread", "Name:\tkworker/0:1\nState:\tI (idle)\n", 0, true},
		{"no unit", "VmRSS:\t7212\n", 0, true},
		{"pages", "VmRSS:\t7212 pages\n", 0, true},
		{"not a number", "VmRSS:\tlots kB\n", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseVmRSS([]byte(tt.in))
			if (err != nil) != tt.err {
				t.Fatalf("parseVmRSS error = %v, want error %v", err, tt.err)
			}
			if got != tt.want {
				t.Errorf("parseVmRSS = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestListening(t *testing.T) {
	const table = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2A3B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0
   1: 0100007F:A1B2 0100007F:2A3B 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0 20 4 30 10 -1
`
	tests := []struct {
		port int
		want bool
	}{
		{0x2A3B, true},
		{0xA1B2, false}, // established, not listening
		{0x1234, false},
		{0x2A3, false}, // a prefix of a listening port
	}
	for _, tt := range tests {
		if got := listening([]byte(table), tt.port); got != tt.want {
			t.Errorf("listening(port %d) = %v, want %v", tt.port, got, tt.want)
		}
	}
}

func TestParseNofile(t *testing.T) {
	tests := []struct {
		in   string
		want int64
	}{
		{"Limit                     Soft Limit           Hard Limit           Units     \nMax open files            65536                65536                files     \n", 65536},
		{"Max open files            unlimited            unlimited            files\n", -1},
		{"Max processes 10 10 processes\n", -1},
	}
	for _, tt := range tests {
		if got := parseNofile([]byte(tt.in)); got != tt.want {
			t.Errorf("parseNofile(%q) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte("4242 (nbdkit) S 1 4242 4242 0 -1 4194560 1033 0 0 0 250 75 3 4 20 0 17 0 1"))
	f.Add([]byte("77 (a (b) c) R 76 77 77 0 -1 0 0 0 0 0 1 2 30 40 20 0 1 0 9 0 0 0"))
	f.Add([]byte(") ("))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseStat(b)
		if err == nil && (s.utime < 0 || s.stime < 0 || s.cutime < 0 || s.cstime < 0) {
			t.Errorf("parseStat(%q) = %+v: negative time without an error", b, s)
		}
	})
}
