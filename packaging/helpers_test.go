package packaging

import (
	"bytes"
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// The version the tests stamp into every build, and what the packages must
// make of it.
const (
	testVersion    = "v9.8.7"
	testCommit     = "0123456789ab"
	testPkgVersion = "9.8.7"
)

// target is one release target of the Makefile and what each tool must say
// about it.
type target struct {
	name    string      // as DIST_TARGETS spells it
	machine elf.Machine // ELF e_machine
	class   elf.Class
	goarch  string   // as "boardnbd version" prints it
	qemu    []string // emulator and CPU that run it here; the oldest CPU boards of this target have
	debArch string
	rpmArch string
	apkArch string
}

var targets = []target{
	{"amd64", elf.EM_X86_64, elf.ELFCLASS64, "amd64", []string{"qemu-x86_64-static"}, "amd64", "x86_64", "x86_64"},
	// Cortex-A53: Raspberry Pi 3 and Zero 2 W, the oldest 64-bit Pis.
	{"arm64", elf.EM_AARCH64, elf.ELFCLASS64, "arm64", []string{"qemu-aarch64-static", "-cpu", "cortex-a53"}, "arm64", "aarch64", "aarch64"},
	// ARM1176: Raspberry Pi Zero / Zero W and Pi 1.
	{"armv6", elf.EM_ARM, elf.ELFCLASS32, "armv6", []string{"qemu-arm-static", "-cpu", "arm1176"}, "armhf", "armv6hl", "armhf"},
	// Cortex-A8: BeagleBone Black.
	{"armv7", elf.EM_ARM, elf.ELFCLASS32, "armv7", []string{"qemu-arm-static", "-cpu", "cortex-a8"}, "armhf", "armv7hl", "armv7"},
	{"riscv64", elf.EM_RISCV, elf.ELFCLASS64, "riscv64", []string{"qemu-riscv64-static"}, "riscv64", "riscv64", "riscv64"},
}

// runner returns the command line that runs t's binary on this machine:
// directly when it is this machine's architecture, else under qemu-user.
func (t target) runner() []string {
	if t.goarch == runtime.GOARCH {
		return nil
	}
	return t.qemu
}

// hostTarget is the target this machine runs natively, if any.
func hostTarget() (target, bool) {
	for _, t := range targets {
		if t.goarch == runtime.GOARCH {
			return t, true
		}
	}
	return target{}, false
}

// need skips the test when a tool is missing, or fails it under CI=true,
// where .ci/deps should have installed it.
func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not found (CI=true; .ci/deps installs it)", tool)
			}
			t.Skipf("%s not found; install it (make deps) to run this test", tool)
		}
	}
}

// repoRoot is the directory of the Makefile.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// makeEnv is the environment for a make started by a test: without what
// an outer make (make test) exports, which would hand the inner one a
// jobserver it cannot reach or variables it should not see.
func makeEnv() []string {
	drop := map[string]bool{
		"MAKEFLAGS": true, "MFLAGS": true, "MAKELEVEL": true, "MAKEOVERRIDES": true,
		"GOOS": true, "GOARCH": true, "GOARM": true, "VERSION": true, "COMMIT": true,
		"DISTDIR": true, "DESTDIR": true, "PREFIX": true, "BINDIR": true, "INIT": true, "BIN": true,
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !drop[k] {
			env = append(env, kv)
		}
	}
	return env
}

// runMake runs make in the repository with args and returns its output.
func runMake(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", append([]string{"-C", repoRoot(t), "--no-print-directory"}, args...)...)
	cmd.Env = makeEnv()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// The release build, made once and shared by every test of the package.
var (
	buildOnce sync.Once
	buildDir  string
	buildOut  string
	buildErr  error
)

// built runs `make package sizes` once, into a temporary DISTDIR, and
// returns that directory and make's output. Both targets in one make, so
// the binaries are built once; -j2 builds two targets at a time.
func built(t *testing.T) (dir, out string) {
	t.Helper()
	need(t, "make", "go", "sha256sum", "gzip")
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "boardnbd-dist-")
		if buildErr != nil {
			return
		}
		start := time.Now()
		buildOut, buildErr = runMake(t, "-j2", "-Otarget", "package", "sizes",
			"DISTDIR="+buildDir, "VERSION="+testVersion, "COMMIT="+testCommit)
		t.Logf("make package sizes: %v", time.Since(start).Round(time.Second))
	})
	if buildErr != nil {
		t.Fatalf("make package sizes: %v\n%s", buildErr, buildOut)
	}
	return buildDir, buildOut
}

// distFile names a file of the release build.
func distFile(dir string, tg target, ext string) string {
	return filepath.Join(dir, "boardnbd-"+testVersion+"-linux-"+tg.name+ext)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// run runs a command and returns standard output and standard error apart.
func run(t *testing.T, timeout time.Duration, name string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// mustRun is run that fails the test on an error.
func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, errOut, err := run(t, 2*time.Minute, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// distTargetsInMakefile reads DIST_TARGETS.
func distTargetsInMakefile(t *testing.T) []string {
	t.Helper()
	mk, err := os.ReadFile(filepath.Join(repoRoot(t), "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^DIST_TARGETS\s*:?=\s*(.+)$`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("Makefile has no DIST_TARGETS line")
	}
	return strings.Fields(string(m[1]))
}

// controlFields parses a Debian control paragraph (dpkg-deb -f output).
func controlFields(s string) map[string]string {
	f := map[string]string{}
	var last string
	for _, line := range strings.Split(s, "\n") {
		if line == "" {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			f[last] += "\n" + strings.TrimSpace(line)
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		last = k
		f[k] = strings.TrimSpace(v)
	}
	return f
}
