//go:build linux

package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// cpuPlan pins the servers to some CPUs and the clients to the others, as
// on a board whose clients are other machines: client and server never
// take turns on a core, and the server has as many cores as the board.
// The zero plan pins nothing.
type cpuPlan struct {
	server, client []int
}

// planCPUs gives the servers the CPUs in list (a taskset list such as "1"
// or "2-3") and the clients every other CPU this process may run on.
func planCPUs(list string, usable []int) (cpuPlan, error) {
	if strings.TrimSpace(list) == "" {
		return cpuPlan{}, nil
	}
	srv, err := parseCPUList(list)
	if err != nil {
		return cpuPlan{}, fmt.Errorf("-server-cpus %q: %v", list, err)
	}
	var p cpuPlan
	for _, c := range srv {
		if !slices.Contains(usable, c) {
			return cpuPlan{}, fmt.Errorf("-server-cpus %q: CPU %d is not one this process may use (%s)", list, c, cpuList(usable))
		}
		p.server = append(p.server, c)
	}
	for _, c := range usable {
		if !slices.Contains(srv, c) {
			p.client = append(p.client, c)
		}
	}
	if len(p.client) == 0 {
		return cpuPlan{}, fmt.Errorf("-server-cpus %q leaves no CPU for the clients (usable: %s)", list, cpuList(usable))
	}
	return p, nil
}

// usableCPUs returns the CPUs this process may run on.
func usableCPUs() ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, err
	}
	var out []int
	for c := 0; len(out) < set.Count(); c++ {
		if set.IsSet(c) {
			out = append(out, c)
		}
	}
	return out, nil
}

// parseCPUList parses a list of CPU numbers and ranges: "1", "0,2", "2-3".
func parseCPUList(s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		lo, hi, isRange := strings.Cut(f, "-")
		a, err := strconv.Atoi(lo)
		b := a
		if err == nil && isRange {
			b, err = strconv.Atoi(hi)
		}
		if err != nil || a < 0 || b < a || b >= 4096 {
			return nil, fmt.Errorf("%q is not a CPU number or range such as 2-3", f)
		}
		for c := a; c <= b; c++ {
			if !slices.Contains(out, c) {
				out = append(out, c)
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no CPU named")
	}
	slices.Sort(out)
	return out, nil
}

// cpuList formats CPUs as taskset takes them.
func cpuList(cpus []int) string {
	var parts []string
	for i := 0; i < len(cpus); {
		j := i
		for j+1 < len(cpus) && cpus[j+1] == cpus[j]+1 {
			j++
		}
		if j == i {
			parts = append(parts, strconv.Itoa(cpus[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", cpus[i], cpus[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

// pin returns argv run on cpus by taskset, or argv itself if cpus is empty.
func pin(cpus []int, argv []string) []string {
	if len(cpus) == 0 {
		return argv
	}
	return append([]string{"taskset", "--cpu-list", cpuList(cpus)}, argv...)
}
