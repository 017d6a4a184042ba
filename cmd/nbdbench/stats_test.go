//go:build linux

package main

import (
	"math"
	"testing"
)

var nan = math.NaN()

// same compares floats, NaN equal to NaN.
func same(a, b float64) bool {
	return a == b || (math.IsNaN(a) && math.IsNaN(b)) || math.Abs(a-b) < 1e-9*math.Max(math.Abs(a), math.Abs(b))
}

func TestMedian(t *testing.T) {
	tests := []struct {
		name string
		in   []float64
		want float64
	}{
		{"empty", nil, nan},
		{"one", []float64{7}, 7},
		{"odd, unsorted", []float64{9, 1, 5}, 5},
		{"even: mean of the middle two", []float64{4, 1, 3, 2}, 2.5},
		{"failed rounds are ignored", []float64{nan, 10, 30, nan, 20}, 20},
		{"all failed", []float64{nan, nan}, nan},
		{"outlier", []float64{100, 101, 5000}, 101},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]float64(nil), tt.in...)
			if got := median(tt.in); !same(got, tt.want) {
				t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
			}
			for i := range in {
				if !same(in[i], tt.in[i]) {
					t.Fatalf("median changed its input: %v, was %v", tt.in, in)
				}
			}
		})
	}
}

func TestRatio(t *testing.T) {
	tests := []struct {
		a, b, want float64
	}{
		{3, 2, 1.5},
		{1, 4, 0.25},
		{0, 4, 0},
		{1, 0, nan},
		{nan, 1, nan},
		{1, nan, nan},
	}
	for _, tt := range tests {
		if got := ratio(tt.a, tt.b); !same(got, tt.want) {
			t.Errorf("ratio(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestBest(t *testing.T) {
	tests := []struct {
		name   string
		in     []float64
		higher bool
		want   int
	}{
		{"highest", []float64{1, 3, 2}, true, 1},
		{"lowest", []float64{1, 3, 0.5}, false, 2},
		{"skips NaN", []float64{nan, 2, nan}, true, 1},
		{"first of a tie", []float64{2, 2}, false, 0},
		{"nothing", []float64{nan}, true, -1},
		{"empty", nil, true, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := best(tt.in, tt.higher); got != tt.want {
				t.Errorf("best(%v, higher=%v) = %d, want %d", tt.in, tt.higher, got, tt.want)
			}
		})
	}
}

func TestSpread(t *testing.T) {
	tests := []struct {
		in   []float64
		want float64
	}{
		{[]float64{90, 100, 110}, 0.2},
		{[]float64{100, 100}, 0},
		{[]float64{100}, nan},
		{[]float64{100, nan}, nan},
		{nil, nan},
	}
	for _, tt := range tests {
		if got := spread(tt.in); !same(got, tt.want) {
			t.Errorf("spread(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestBestPeer(t *testing.T) {
	r := newResults()
	for _, s := range []struct {
		server string
		vals   []float64
	}{
		{srvBoardnbd, []float64{500, 510, 490}},
		{srvNbdkit, []float64{400, 420, 410}},
		{srvNbdServer, []float64{450, nan, 430}},
		{srvQemuNbd, []float64{nan, nan, nan}},
	} {
		for _, v := range s.vals {
			r.add("w", s.server, mMiBs, v)
			r.add("w", s.server, mCPUGiB, v/100)
		}
	}
	servers := []string{srvBoardnbd, srvNbdkit, srvNbdServer, srvQemuNbd}
	tests := []struct {
		m        metric
		wantName string
		want     float64
	}{
		{mMiBs, srvNbdServer, 440}, // boardnbd is not its own peer
		{mCPUGiB, srvNbdkit, 4.1},  // lower is better
		{mIOPS, "", nan},           // no figures
	}
	for _, tt := range tests {
		name, v := r.bestPeer("w", tt.m, servers)
		if name != tt.wantName || !same(v, tt.want) {
			t.Errorf("bestPeer(%s) = %q, %v, want %q, %v", tt.m.name, name, v, tt.wantName, tt.want)
		}
	}
}
