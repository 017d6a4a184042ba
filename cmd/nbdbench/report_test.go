//go:build linux

package main

import (
	"math"
	"strings"
	"testing"
)

func TestFormatValue(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{
		{123456.7, "123457"},
		{100, "100"},
		{99.95, "100.0"}, // rounds up within its band
		{42.04, "42.0"},
		{3.14159, "3.14"},
		{0.5123, "0.512"},
		{0, "0.000"},
		{math.NaN(), "–"},
		{math.Inf(1), "–"},
	}
	for _, tt := range tests {
		if got := formatValue(tt.in); got != tt.want {
			t.Errorf("formatValue(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestFormatRatio(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{
		{1.2, "1.20×"},
		{0.034, "0.03×"},
		{math.NaN(), "–"},
	}
	for _, tt := range tests {
		if got := formatRatio(tt.in); got != tt.want {
			t.Errorf("formatRatio(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestFormatBytes(t *testing.T) {
	tests := []struct {
		in   int64
		want string
	}{
		{7212 << 10, "7.04 MiB"},
		{74 << 20, "74.0 MiB"},
		{18 << 10, "18.0 KiB"},
		{-3 << 10, "-3.0 KiB"},
		{0, "0.0 KiB"},
	}
	for _, tt := range tests {
		if got := formatBytes(tt.in); got != tt.want {
			t.Errorf("formatBytes(%d) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestMdTable(t *testing.T) {
	var b strings.Builder
	mdTable(&b, []string{"a", "figure ↑"}, [][]string{{"long cell", "1"}, {"", "µs"}})
	want := `| a         | figure ↑ |
| --------- | -------- |
| long cell | 1        |
|           | µs       |
`
	if b.String() != want {
		t.Errorf("mdTable wrote\n%s\nwant\n%s", b.String(), want)
	}
}

// sampleResults has three rounds of two workloads on three servers.
func sampleResults() *results {
	r := newResults()
	add := func(w workload, m metric, server string, vals ...float64) {
		for _, v := range vals {
			r.add(w.key, server, m, v)
		}
	}
	add(wSeqRead4, mMiBs, srvBoardnbd, 900, 1000, 1100)
	add(wSeqRead4, mMiBs, srvNbdkit, 800, 800, 800)
	add(wSeqRead4, mMiBs, srvNbdServer, 500, 500, 500)
	add(wSeqRead4, mCPUGiB, srvBoardnbd, 0.5, 0.5, 0.5)
	add(wSeqRead4, mCPUGiB, srvNbdkit, 0.4, 0.4, 0.4)
	add(wSeqRead4, mCPUGiB, srvNbdServer, 1, 1, 1)
	add(wSeqRead4, mCopyCPU, srvBoardnbd, 98, 99, 100) // the client's too
	add(wSeqRead4, mCopyCPU, srvNbdkit, 97, 97, 97)
	add(wSeqRead4, mCopyCPU, srvNbdServer, 80, 80, 80)
	add(wRandRead1, mIOPS, srvBoardnbd, 20000, 20000, math.NaN())
	add(wRandRead1, mIOPS, srvNbdkit, 10000, 10000, 10000)
	add(wRandRead1, mIOPS, srvNbdServer, 15000, 15000, 15000)
	add(wRandRead1, mP99, srvBoardnbd, 50, 50, 50)
	add(wRandRead1, mP99, srvNbdkit, 100, 100, 100)
	add(wRandRead1, mP99, srvNbdServer, 60, 60, 60)
	add(wRandRead1, mCPUk, srvBoardnbd, 30, 30, 30)
	add(wRandRead1, mCPUk, srvNbdkit, 30, 30, 30)
	add(wRandRead1, mCPUk, srvNbdServer, 40, 40, 40)
	add(wRandRead1, mClientCPU, srvBoardnbd, 95, 97, 99) // the client's: never a loss or a win
	add(wRandRead1, mClientCPU, srvNbdkit, 90, 90, 90)
	add(wRandRead1, mClientCPU, srvNbdServer, 95, 95, 95)
	r.markPartial(wSeqRead4.key, srvNbdServer, 40)
	return r
}

func TestResultTable(t *testing.T) {
	var b strings.Builder
	servers := []string{srvBoardnbd, srvNbdkit, srvNbdServer}
	resultTable(&b, servers, []workload{wSeqRead4, wRandRead1}, sampleResults(), 3, map[string]bool{srvNbdServer: true})
	want := `| workload                    | figure                   | boardnbd | nbdkit | nbd-server | best peer  | boardnbd ÷ best peer | boardnbd ÷ nbdkit | spread (largest) |
| --------------------------- | ------------------------ | -------- | ------ | ---------- | ---------- | -------------------- | ----------------- | ---------------- |
| seq read, 4 conns (nbdcopy) | MiB/s ↑                  | 1000     | 800    | 500 † ‡    | nbdkit     | 1.25×                | 1.25×             | 20% boardnbd     |
|                             | server CPU s/GiB ↓       | 0.500    | 0.400  | 1.00 † ‡   | nbdkit     | 1.25×                | 1.25×             | 0%               |
|                             | nbdcopy CPU % of a core  | 99.0     | 97.0   | 80.0 † ‡   | –          | –                    | –                 | 2% boardnbd      |
| 4k random read, QD1 (fio)   | IOPS ↑                   | 20000    | 10000  | 15000      | nbd-server | 1.33×                | 2.00×             | 0%               |
|                             | p99 latency µs ↓         | 50.0     | 100    | 60.0       | nbd-server | 0.83×                | 0.50×             | 0%               |
|                             | server CPU ms/1000 I/O ↓ | 30.0     | 30.0   | 40.0       | nbdkit     | 1.00×                | 1.00×             | 0%               |
|                             | fio CPU % of a core      | 97.0     | 90.0   | 95.0       | –          | –                    | –                 | 4% boardnbd      |
`
	if b.String() != want {
		t.Errorf("resultTable wrote\n%s\nwant\n%s", b.String(), want)
	}
}

func TestResultTableWithoutBoardnbd(t *testing.T) {
	var b strings.Builder
	resultTable(&b, []string{srvNbdkit}, []workload{wSeqRead4}, sampleResults(), 1, nil)
	header, _, _ := strings.Cut(b.String(), "\n")
	if strings.Contains(header, "÷") || strings.Contains(header, "spread") {
		t.Errorf("header %q: ratios to boardnbd, or a spread of one round, with neither measured", header)
	}
}

func TestJudge(t *testing.T) {
	servers := []string{srvBoardnbd, srvNbdkit, srvNbdServer}
	f := &footprint{exports: 8, idle: 7 << 20, conns: []connRSS{{100, 7<<20 + 100*20<<10}, {1000, 7<<20 + 1000*66<<10}}}
	got := map[string]string{}
	details := map[string]string{}
	for _, v := range judge(sampleResults(), servers, f) {
		got[v.target] = v.state
		details[v.target] = v.detail
	}
	// Each round's figure against the best peer's of the same round.
	if d, want := details["seq read, 4 conns (nbdcopy): MiB/s ≥ best peer"],
		"1000 MiB/s ↑ vs nbdkit 800 (1.25×; per round 1.12×–1.38×)"; d != want {
		t.Errorf("judge: seq read detail %q, want %q", d, want)
	}
	want := map[string]string{
		"seq read, 4 conns (nbdcopy): MiB/s ≥ best peer":                     "PASS",
		"seq read, 1 conn (nbdcopy): MiB/s ≥ best peer":                      "n/a",                   // not measured
		"4k random read, QD1 (fio): server CPU per I/O ≤ nbdkit":             "PASS (rounds overlap)", // equal passes, but is no clear win
		"4k random read, QD1 (fio): p99 latency ≤ nbdkit":                    "PASS",
		"4k random read, QD32 (fio): IOPS ≥ 1.2 × nbdkit":                    "n/a",
		"idle RSS with 8 exports < 12 MiB":                                   "PASS",
		"RSS per idle connection (100 connections) < 64 KiB":                 "PASS",
		"RSS per idle connection (1000 connections) < 64 KiB":                "FAIL",
		"RSS with 1000 idle connections ≤ 12 MiB + 1000 × 64 KiB = 74.5 MiB": "PASS",
	}
	for target, state := range want {
		if got[target] != state {
			t.Errorf("judge: %q = %q, want %q", target, got[target], state)
		}
	}
}

func TestOverlap(t *testing.T) {
	tests := []struct {
		name   string
		a, b   []float64
		factor float64
		want   bool
	}{
		{"apart", []float64{10, 11, 12}, []float64{20, 21}, 1, false},
		{"touching", []float64{10, 20}, []float64{20, 30}, 1, true},
		{"inside", []float64{10, 30}, []float64{15, 16}, 1, true},
		{"apart once scaled", []float64{10, 11}, []float64{10, 11}, 1.2, false},
		{"one round", []float64{10}, []float64{10}, 1, false},
		{"failed rounds ignored", []float64{10, nan, 11}, []float64{nan, 30, 31}, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := overlap(tt.a, tt.b, tt.factor); got != tt.want {
				t.Errorf("overlap(%v, %v, %v) = %v, want %v", tt.a, tt.b, tt.factor, got, tt.want)
			}
		})
	}
}

func TestPairedRange(t *testing.T) {
	tests := []struct {
		name   string
		a, b   []float64
		lo, hi float64 // NaN for none
	}{
		{"by round, not sorted", []float64{10, 30, 20}, []float64{20, 30, 10}, 0.5, 2},
		{"failed rounds skipped", []float64{10, nan, 12, 9}, []float64{5, 5, nan, 9}, 1, 2},
		{"one pair", []float64{10, nan}, []float64{5, 5}, nan, nan},
		{"unequal lengths", []float64{10, 20, 30}, []float64{10, 10}, 1, 2},
	}
	for _, tt := range tests {
		lo, hi := pairedRange(tt.a, tt.b)
		if !sameFloat(lo, tt.lo) || !sameFloat(hi, tt.hi) {
			t.Errorf("%s: pairedRange(%v, %v) = %v, %v, want %v, %v", tt.name, tt.a, tt.b, lo, hi, tt.lo, tt.hi)
		}
	}
}

// sameFloat is ==, with NaN equal to NaN.
func sameFloat(a, b float64) bool { return a == b || math.IsNaN(a) && math.IsNaN(b) }

func TestLosses(t *testing.T) {
	servers := []string{srvBoardnbd, srvNbdkit, srvNbdServer}
	got := losses(sampleResults(), servers, []workload{wSeqRead4, wRandRead1})
	want := []string{"seq read, 4 conns (nbdcopy), server CPU s/GiB ↓: boardnbd 0.500, nbdkit 0.400 (1.25×)"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("losses() = %q, want %q", got, want)
	}
}
