//go:build linux

package main

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// fioprobe.sh is a developer's tool no other test runs: check that bash
// parses it and that it turns away what it cannot run, with its usage.
func TestFioprobeScript(t *testing.T) {
	if out, err := exec.Command("bash", "-n", "fioprobe.sh").CombinedOutput(); err != nil {
		t.Fatalf("bash -n fioprobe.sh: %v\n%s", err, out)
	}
	for _, args := range [][]string{
		{},                              // no image, no server
		{"img"},                         // no server
		{"-w", "read", "img", "nbdkit"}, // not a workload it knows
		{"-t", "2", "img", "nbdkit"},    // too short to sample
		{"-x", "img", "nbdkit"},         // no such option
	} {
		out, err := exec.Command("bash", append([]string{"fioprobe.sh"}, args...)...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("fioprobe.sh %q: %v, want exit status 2\n%s", args, err, out)
		}
		if !strings.Contains(string(out), "fioprobe.sh [options] IMAGE SERVER...") {
			t.Errorf("fioprobe.sh %q printed no usage:\n%s", args, out)
		}
	}
}
