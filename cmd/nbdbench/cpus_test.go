//go:build linux

package main

import (
	"slices"
	"strings"
	"testing"
)

func TestParseCPUList(t *testing.T) {
	tests := []struct {
		in   string
		want []int
		err  bool
	}{
		{"1", []int{1}, false},
		{"3,0-1", []int{0, 1, 3}, false},
		{"2-3, 3", []int{2, 3}, false},
		{"", nil, true},
		{"x", nil, true},
		{"3-1", nil, true},
		{"-1", nil, true},
		{"0-99999", nil, true},
	}
	for _, tt := range tests {
		got, err := parseCPUList(tt.in)
		if (err != nil) != tt.err || !slices.Equal(got, tt.want) {
			t.Errorf("parseCPUList(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestCPUList(t *testing.T) {
	for _, tt := range []struct {
		in   []int
		want string
	}{
		{[]int{1}, "1"},
		{[]int{0, 1, 2, 5, 7, 8}, "0-2,5,7-8"},
		{nil, ""},
	} {
		if got := cpuList(tt.in); got != tt.want {
			t.Errorf("cpuList(%v) = %q, want %q", tt.in, got, tt.want)
		}
		if len(tt.in) > 0 {
			if back, err := parseCPUList(tt.want); err != nil || !slices.Equal(back, tt.in) {
				t.Errorf("parseCPUList(%q) = %v, %v; want %v", tt.want, back, err, tt.in)
			}
		}
	}
}

func TestPlanCPUs(t *testing.T) {
	usable := []int{0, 1, 2, 3}
	p, err := planCPUs("3", usable)
	if err != nil || !slices.Equal(p.server, []int{3}) || !slices.Equal(p.client, []int{0, 1, 2}) {
		t.Errorf(`planCPUs("3") = %+v, %v; want servers on 3, clients on 0-2`, p, err)
	}
	if p, err := planCPUs("", usable); err != nil || p.server != nil || p.client != nil {
		t.Errorf(`planCPUs("") = %+v, %v; want no pinning`, p, err)
	}
	for _, bad := range []string{"0-3", "4", "x"} {
		if _, err := planCPUs(bad, usable); err == nil || !strings.Contains(err.Error(), "-server-cpus") {
			t.Errorf("planCPUs(%q) = %v, want an error naming -server-cpus", bad, err)
		}
	}
}

func TestPin(t *testing.T) {
	argv := []string{"fio", "--name=x"}
	if got := pin(nil, argv); !slices.Equal(got, argv) {
		t.Errorf("pin(nil) = %q, want argv unchanged", got)
	}
	want := []string{"taskset", "--cpu-list", "0,2", "fio", "--name=x"}
	if got := pin([]int{0, 2}, argv); !slices.Equal(got, want) {
		t.Errorf("pin = %q, want %q", got, want)
	}
}

func TestUsableCPUs(t *testing.T) {
	cpus, err := usableCPUs()
	if err != nil || len(cpus) == 0 || !slices.IsSorted(cpus) {
		t.Fatalf("usableCPUs() = %v, %v; want at least one CPU, in order", cpus, err)
	}
}
