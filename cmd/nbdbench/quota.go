//go:build linux

package main

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// cpuQuota holds the servers to a share of a core with a cgroup CPU quota,
// as on a board whose cores are slower than its clients': the server's CPU
// per I/O, not the client's, then sets the pace. Each server joins the
// cgroup as it starts, and so do the processes it forks.
type cpuQuota struct {
	share  float64 // of one core
	period time.Duration
	dir    string // the cgroup's directory
}

// Limits of the kernel's CFS bandwidth control.
const (
	minQuota  = time.Millisecond
	maxPeriod = time.Second
	// quotaPeriod is short so that a held-back server waits at most a few
	// milliseconds, as a slower core would, not a tenth of a second.
	quotaPeriod = 10 * time.Millisecond
)

// quotaPeriodFor is the period for share: quotaPeriod unless that would
// make the quota shorter than the kernel allows.
func quotaPeriodFor(share float64) (time.Duration, error) {
	if !(share > 0) || share > 1024 {
		return 0, fmt.Errorf("-server-quota %g: want a share of one core above 0, such as 0.3", share)
	}
	p := quotaPeriod
	if q := time.Duration(share * float64(p)); q < minQuota {
		p = time.Duration(math.Ceil(float64(minQuota) / share))
	}
	if p > maxPeriod {
		return 0, fmt.Errorf("-server-quota %g: below %g of a core the kernel cannot hold a server", share, float64(minQuota)/float64(maxPeriod))
	}
	return p, nil
}

// cgroupMount is where the cgroup file system that can limit CPU time is
// mounted, from /proc/self/mountinfo: a v1 hierarchy with the cpu
// controller if there is one, else the v2 hierarchy.
func cgroupMount(mountinfo string) (dir string, v2 bool, err error) {
	var unified string
	for line := range strings.SplitSeq(mountinfo, "\n") {
		// "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS"
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 {
			continue
		}
		switch g[0] {
		case "cgroup":
			if slices.Contains(strings.Split(g[2], ","), "cpu") {
				return unescapeMount(f[4]), false, nil
			}
		case "cgroup2":
			if unified == "" {
				unified = unescapeMount(f[4])
			}
		}
	}
	if unified == "" {
		return "", false, errors.New("no cgroup file system with the cpu controller is mounted")
	}
	return unified, true, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// newCPUQuota makes a cgroup for the servers, named after this process,
// and sets its quota.
func newCPUQuota(share float64) (*cpuQuota, error) {
	period, err := quotaPeriodFor(share)
	if err != nil {
		return nil, err
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	root, v2, err := cgroupMount(string(mi))
	if err != nil {
		return nil, fmt.Errorf("-server-quota: %v", err)
	}
	if v2 {
		c, err := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
		if err != nil || !slices.Contains(strings.Fields(string(c)), "cpu") {
			return nil, fmt.Errorf("-server-quota: the cgroup v2 hierarchy at %s has no cpu controller (cgroup.controllers: %q)", root, strings.TrimSpace(string(c)))
		}
		if err := writeCgroup(root, "cgroup.subtree_control", "+cpu"); err != nil {
			return nil, err
		}
	}
	q := &cpuQuota{share: share, period: period, dir: filepath.Join(root, fmt.Sprintf("nbdbench-%d", os.Getpid()))}
	if err := os.Mkdir(q.dir, 0o755); err != nil {
		return nil, fmt.Errorf("-server-quota: %v", err)
	}
	quota := q.quota()
	if v2 {
		err = writeCgroup(q.dir, "cpu.max", fmt.Sprintf("%d %d", quota.Microseconds(), period.Microseconds()))
	} else if err = writeCgroup(q.dir, "cpu.cfs_period_us", strconv.FormatInt(period.Microseconds(), 10)); err == nil {
		err = writeCgroup(q.dir, "cpu.cfs_quota_us", strconv.FormatInt(quota.Microseconds(), 10))
	}
	if err != nil {
		q.remove()
		return nil, err
	}
	return q, nil
}

func writeCgroup(dir, file, value string) error {
	if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0); err != nil {
		return fmt.Errorf("-server-quota: writing %q: %v", value, err)
	}
	return nil
}

// wrap returns argv run inside the cgroup: a shell puts itself in it and
// then becomes argv, so the server keeps the shell's process ID. A nil
// quota returns argv itself.
func (q *cpuQuota) wrap(argv []string) []string {
	if q == nil {
		return argv
	}
	return append([]string{"sh", "-c", `echo $$ > "$0" && exec "$@"`, filepath.Join(q.dir, "cgroup.procs")}, argv...)
}

// throttle is how often the kernel held the servers back: periods in
// which they ran, and of those the ones in which they used up the quota.
type throttle struct {
	periods, throttled int64
}

// throttling reads the cgroup's counters; both keys are the same in v1
// and v2.
func (q *cpuQuota) throttling() (throttle, error) {
	f, err := os.Open(filepath.Join(q.dir, "cpu.stat"))
	if err != nil {
		return throttle{}, err
	}
	defer f.Close()
	var t throttle
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "nr_periods":
			t.periods = n
		case "nr_throttled":
			t.throttled = n
		}
	}
	return t, sc.Err()
}

// remove deletes the cgroup once the servers in it have gone; their
// exit may take a moment after they are killed.
func (q *cpuQuota) remove() error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := os.Remove(q.dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("removing the servers' cgroup: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// describe is the report's line on the quota.
func (q *cpuQuota) describe() string {
	return fmt.Sprintf("every server held to %g of a core by a cgroup CPU quota (%s in each %s), "+
		"as on a board whose cores are slower than its clients': the server's CPU per I/O sets the pace", q.share, q.quota(), q.period)
}

// quota is the CPU time the servers may use in each period, to the
// microsecond the kernel counts in.
func (q *cpuQuota) quota() time.Duration {
	return time.Duration(math.Round(q.share*float64(q.period)/float64(time.Microsecond))) * time.Microsecond
}
