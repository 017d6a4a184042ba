//go:build linux

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestQuotaPeriodFor(t *testing.T) {
	for _, tt := range []struct {
		share float64
		want  time.Duration // 0: an error
	}{
		{0.3, 10 * time.Millisecond},
		{1, 10 * time.Millisecond},
		{2.5, 10 * time.Millisecond},
		{0.1, 10 * time.Millisecond},
		{0.05, 20 * time.Millisecond}, // a 1 ms quota is the least
		{0.001, time.Second},
		{0.0005, 0},
		{0, 0},
		{-0.3, 0},
		{2000, 0},
	} {
		got, err := quotaPeriodFor(tt.share)
		if (err != nil) != (tt.want == 0) || got != tt.want {
			t.Errorf("quotaPeriodFor(%g) = %v, %v; want %v", tt.share, got, err, tt.want)
		}
	}
}

func TestCgroupMount(t *testing.T) {
	const (
		v2   = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
		v1   = "40 33 0:35 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpu,cpuacct\n"
		v1mm = "41 33 0:36 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
		v1ac = "42 33 0:37 / /sys/fs/cgroup/cpuacct rw,nosuid - cgroup cgroup rw,cpuacct\n"
		root = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
		odd  = "43 33 0:38 / /mnt/my\\040cgroups rw - cgroup cgroup rw,cpu\n"
	)
	for _, tt := range []struct {
		name, info, dir string
		v2, err         bool
	}{
		{"unified", root + v2, "/sys/fs/cgroup", true, false},
		{"v1", root + v1mm + v1, "/sys/fs/cgroup/cpu,cpuacct", false, false},
		{"hybrid prefers v1's cpu", root + v2 + v1ac + v1, "/sys/fs/cgroup/cpu,cpuacct", false, false},
		{"cpuacct alone is not cpu", root + v1ac, "", false, true},
		{"escaped mount point", odd, "/mnt/my cgroups", false, false},
		{"none", root + "garbage line\n", "", false, true},
	} {
		dir, isV2, err := cgroupMount(tt.info)
		if dir != tt.dir || isV2 != tt.v2 || (err != nil) != tt.err {
			t.Errorf("%s: cgroupMount = %q, v2 %v, %v; want %q, v2 %v, error %v", tt.name, dir, isV2, err, tt.dir, tt.v2, tt.err)
		}
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		"/plain":          "/plain",
		`/a\040b`:         "/a b",
		`/tab\011x\134y`:  "/tab\tx\\y",
		`/short\04`:       `/short\04`,
		`/not\9990octal`:  `/not\9990octal`,
		`/end\`:           `/end\`,
		`\040\040`:        "  ",
		`/multi\040\041z`: "/multi !z",
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestQuotaWrap(t *testing.T) {
	argv := []string{"nbdkit", "-f", "file", "/x"}
	var none *cpuQuota
	if got := none.wrap(argv); !slices.Equal(got, argv) {
		t.Errorf("nil quota wrap = %q, want argv unchanged", got)
	}
	q := &cpuQuota{dir: "/sys/fs/cgroup/nbdbench-1"}
	got := q.wrap(argv)
	want := append([]string{"sh", "-c", `echo $$ > "$0" && exec "$@"`, "/sys/fs/cgroup/nbdbench-1/cgroup.procs"}, argv...)
	if !slices.Equal(got, want) {
		t.Errorf("wrap = %q, want %q", got, want)
	}
}

// TestQuotaHoldsBack runs a busy loop, bounded by timeout(1), under a
// tenth of a core and checks that the kernel held it back and that the
// process kept its ID, as the bench measures a server by it.
func TestQuotaHoldsBack(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("making a cgroup needs root")
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := cgroupMount(string(mi)); err != nil {
		t.Skipf("this kernel offers no CPU quota here: %v", err)
	}
	q, err := newCPUQuota(0.1)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := q.remove(); err != nil {
			t.Error(err)
		}
	}()
	if _, err := os.Stat(q.dir); err != nil {
		t.Fatal(err)
	}
	argv := q.wrap([]string{"timeout", "0.4", "sh", "-c", "while :; do :; done"})
	cmd := exec.Command(argv[0], argv[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	procs, err := os.ReadFile(filepath.Join(q.dir, "cgroup.procs"))
	if err != nil {
		t.Fatal(err)
	}
	if pid := cmd.Process.Pid; !slices.Contains(strings.Fields(string(procs)), strconv.Itoa(pid)) {
		t.Errorf("the cgroup holds %q, not the process started (%d)", procs, pid)
	}
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); err != nil && (!ok || ee.ExitCode() != 124) {
		t.Fatalf("busy loop: %v", err)
	}
	held, err := q.throttling()
	if err != nil {
		t.Fatal(err)
	}
	if held.periods == 0 || held.throttled == 0 {
		t.Errorf("a busy loop under a tenth of a core ran %d periods, held back in %d; want it held back", held.periods, held.throttled)
	}
	if got := q.describe(); !strings.Contains(got, "0.1 of a core") || !strings.Contains(got, "1ms in each 10ms") {
		t.Errorf("describe() = %q", got)
	}
}
