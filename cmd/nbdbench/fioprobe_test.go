//go:build linux

package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// fioprobe.sh is a developer's tool no other test runs: check that bash
// parses it and that it turns away what it cannot run, with its usage.
func TestFioprobeScript(t *testing.T) {
	// Read here, not only by bash, so that go test's cache knows the file.
	script, err := os.ReadFile("fioprobe.sh")
	if err != nil {
		t.Fatal(err)
	}
	parse := exec.Command("bash", "-n")
	parse.Stdin = bytes.NewReader(script)
	if out, err := parse.CombinedOutput(); err != nil {
		t.Fatalf("bash -n fioprobe.sh: %v\n%s", err, out)
	}
	for _, args := range [][]string{
		{},                       // no server
		{"-w", "read", "nbdkit"}, // not a workload it knows
		{"-t", "2", "nbdkit"},    // too short to sample
		{"-r", "0", "nbdkit"},    // no rounds
		{"-m", "0", "nbdkit"},    // no image
		{"-m", "1G", "nbdkit"},   // a size not in MiB
		{"-x", "nbdkit"},         // no such option
	} {
		out, err := exec.Command("bash", append([]string{"fioprobe.sh"}, args...)...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("fioprobe.sh %q: %v, want exit status 2\n%s", args, err, out)
		}
		if !strings.Contains(string(out), "fioprobe.sh [options] SERVER...") {
			t.Errorf("fioprobe.sh %q printed no usage:\n%s", args, out)
		}
	}
}
