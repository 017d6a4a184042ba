package packaging

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The table of targets above is the Makefile's list: a target added there
// gets no release test until it is added here.
func TestTargetsMatchMakefile(t *testing.T) {
	var names []string
	for _, tg := range targets {
		names = append(names, tg.name)
	}
	if got := distTargetsInMakefile(t); !slices.Equal(got, names) {
		t.Errorf("Makefile DIST_TARGETS = %v, want %v (the targets this test knows)", got, names)
	}
}

// Every release binary is a static executable for its machine: no
// program interpreter, no shared libraries, and file and readelf agree.
func TestDistBinariesStatic(t *testing.T) {
	dir, _ := built(t)
	fileWords := map[elf.Machine]string{
		elf.EM_X86_64:  "x86-64",
		elf.EM_AARCH64: "ARM aarch64",
		elf.EM_ARM:     "ARM, EABI5",
		elf.EM_RISCV:   "RISC-V",
	}
	readelfWords := map[elf.Machine]string{
		elf.EM_X86_64:  "Advanced Micro Devices X86-64",
		elf.EM_AARCH64: "AArch64",
		elf.EM_ARM:     "ARM",
		elf.EM_RISCV:   "RISC-V",
	}
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			bin := distFile(dir, tg, "")
			f, err := elf.Open(bin)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if f.Machine != tg.machine || f.Class != tg.class || f.Type != elf.ET_EXEC {
				t.Errorf("%s: ELF %v %v %v, want %v %v ET_EXEC", bin, f.Class, f.Machine, f.Type, tg.class, tg.machine)
			}
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
					t.Errorf("%s: has a %v program header; want a static executable", bin, p.Type)
				}
			}
			if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
				t.Errorf("%s: needs shared libraries %v", bin, libs)
			}
			if tg.machine == elf.EM_ARM {
				// e_flags, which debug/elf does not decode, is at byte 36
				// of a 32-bit header; its top byte is the EABI version.
				hdr := readFile(t, bin)[:52]
				if flags := f.ByteOrder.Uint32(hdr[36:40]); flags>>24 != 5 {
					t.Errorf("%s: ELF flags %#x, want EABI version 5", bin, flags)
				}
			}

			if _, err := exec.LookPath("file"); err == nil {
				out := mustRun(t, "file", "-b", bin)
				for _, w := range []string{"ELF", "executable", "statically linked", fileWords[tg.machine]} {
					if !strings.Contains(out, w) {
						t.Errorf("file %s = %q, want it to say %q", bin, strings.TrimSpace(out), w)
					}
				}
				if strings.Contains(out, "dynamically") || strings.Contains(out, "interpreter") {
					t.Errorf("file %s = %q: not static", bin, out)
				}
			} else {
				need(t, "file")
			}
			if _, err := exec.LookPath("readelf"); err == nil {
				out := mustRun(t, "readelf", "-h", "-l", "-d", bin)
				if m := regexp.MustCompile(`Machine:\s+(.*)`).FindStringSubmatch(out); m == nil || strings.TrimSpace(m[1]) != readelfWords[tg.machine] {
					t.Errorf("readelf -h %s: Machine %q, want %q", bin, m, readelfWords[tg.machine])
				}
				if strings.Contains(out, "INTERP") || strings.Contains(out, "(NEEDED)") {
					t.Errorf("readelf %s shows an interpreter or needed libraries:\n%s", bin, out)
				}
			} else {
				need(t, "readelf")
			}
		})
	}
}

// SHA256SUMS lists every binary and package once, with the right sums,
// and sha256sum -c accepts it.
func TestSHA256SUMS(t *testing.T) {
	dir, _ := built(t)
	sums, err := os.ReadFile(filepath.Join(dir, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, tg := range targets {
		for _, ext := range []string{"", ".deb", ".rpm", ".apk"} {
			want = append(want, filepath.Base(distFile(dir, tg, ext)))
		}
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q is not \"SUM  NAME\"", line)
		}
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if h := sha256.Sum256(data); hex.EncodeToString(h[:]) != sum {
			t.Errorf("SHA256SUMS: %s has %s, file hashes to %x", name, sum, h)
		}
		got = append(got, name)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("SHA256SUMS lists %v, want %v", got, want)
	}
	cmd := exec.Command("sha256sum", "--check", "--strict", "SHA256SUMS")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("sha256sum --check: %v\n%s", err, out)
	}
}

// Each binary runs on the oldest CPU of its boards (under qemu-user where
// it is not this machine's), says which target it is, and serves an image
// that nbdinfo and nbdcopy on this machine read and write correctly.
func TestServeOnEveryTarget(t *testing.T) {
	dir, _ := built(t)
	need(t, "nbdinfo", "nbdcopy")
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			runner := tg.runner()
			if runner != nil {
				need(t, runner[0])
			}
			bin := distFile(dir, tg, "")
			argv := append(slices.Clone(runner), bin)

			out := mustRun(t, argv[0], append(argv[1:], "version")...)
			want := fmt.Sprintf("boardnbd %s (commit %s) go", testVersion, testCommit)
			if !strings.HasPrefix(out, want) || !strings.HasSuffix(strings.TrimSpace(out), " linux/"+tg.goarch) {
				t.Errorf("boardnbd version = %q, want %q... linux/%s", strings.TrimSpace(out), want, tg.goarch)
			}

			img := filepath.Join(t.TempDir(), "disk.img")
			data := randomBytes(t, 4<<20)
			if err := os.WriteFile(img, data, 0o600); err != nil {
				t.Fatal(err)
			}
			srv := startServer(t, append(argv, "serve", "--listen", "127.0.0.1:0", img))
			uri := "nbd://" + srv.addr + "/disk.img"

			info := nbdinfo(t, uri)
			if info.Size != int64(len(data)) || info.ReadOnly {
				t.Errorf("nbdinfo %s: size %d read-only %v, want %d writable", uri, info.Size, info.ReadOnly, len(data))
			}

			copied := filepath.Join(t.TempDir(), "copy.img")
			mustRun(t, "nbdcopy", uri, copied)
			if got := fileSum(t, copied); got != sum(data) {
				t.Errorf("nbdcopy %s: copy has SHA-256 %s, image %s", uri, got, sum(data))
			}

			// And back: a write through the server lands in the image.
			fresh := randomBytes(t, len(data))
			src := filepath.Join(t.TempDir(), "fresh.img")
			if err := os.WriteFile(src, fresh, 0o600); err != nil {
				t.Fatal(err)
			}
			mustRun(t, "nbdcopy", "--flush", src, uri)
			if got := fileSum(t, img); got != sum(fresh) {
				t.Errorf("after nbdcopy to %s the image has SHA-256 %s, want %s", uri, got, sum(fresh))
			}

			if err := srv.stop(); err != nil {
				t.Errorf("SIGTERM: %v\nlog:\n%s", err, srv.log())
			}
		})
	}
}

// An ARMv7 build must not pass for ARMv6: on the Pi Zero's ARM1176 it
// dies of an illegal instruction, which is what the armv6 target is for.
// This also shows that qemu's -cpu really holds the binaries to that CPU.
func TestARMv7BinaryFailsOnARMv6CPU(t *testing.T) {
	dir, _ := built(t)
	need(t, "qemu-arm-static")
	var v7 target
	for _, tg := range targets {
		if tg.name == "armv7" {
			v7 = tg
		}
	}
	_, _, err := run(t, time.Minute, "qemu-arm-static", "-cpu", "arm1176", distFile(dir, v7, ""), "version")
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("armv7 binary on arm1176: err = %v, want it killed by SIGILL", err)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !(ws.Signaled() && ws.Signal() == syscall.SIGILL || ws.ExitStatus() == 128+int(syscall.SIGILL)) {
		t.Errorf("armv7 binary on arm1176: %v, want SIGILL (illegal instruction)", err)
	}
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sum(b)
}

type exportInfo struct {
	Size     int64 `json:"export-size"`
	ReadOnly bool  `json:"is_read_only"`
}

// nbdinfo asks nbdinfo about the export at uri.
func nbdinfo(t *testing.T, uri string) exportInfo {
	t.Helper()
	out := mustRun(t, "nbdinfo", "--json", uri)
	var info struct{ Exports []exportInfo }
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo --json %s: %v, %d exports\n%s", uri, err, len(info.Exports), out)
	}
	return info.Exports[0]
}

// server is a boardnbd started by a test.
type server struct {
	cmd  *exec.Cmd
	addr string // 127.0.0.1:PORT it listens on
	done chan error
	mu   sync.Mutex
	buf  strings.Builder // its log so far
}

func (s *server) log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// startServer starts argv, waits until its log says where it listens,
// and stops it at the end of the test if the test did not.
func startServer(t *testing.T, argv []string) *server {
	t.Helper()
	s := &server{cmd: exec.Command(argv[0], argv[1:]...), done: make(chan error, 1)}
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	listening := regexp.MustCompile(`msg=listening addr=(127\.0\.0\.1:\d+)`)
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.buf.WriteString(line + "\n")
			s.mu.Unlock()
			if m := listening.FindStringSubmatch(line); m != nil {
				select {
				case ready <- m[1]:
				default:
				}
			}
		}
		io.Copy(io.Discard, stderr)
		s.done <- s.cmd.Wait()
	}()
	t.Cleanup(func() {
		select {
		case err := <-s.done:
			s.done <- err
		default:
			s.cmd.Process.Kill()
			<-s.done
		}
	})
	select {
	case s.addr = <-ready:
		return s
	case err := <-s.done:
		s.done <- err
		t.Fatalf("%s exited before listening: %v\n%s", strings.Join(argv, " "), err, s.log())
	case <-time.After(90 * time.Second):
		t.Fatalf("%s: not listening after 90s\n%s", strings.Join(argv, " "), s.log())
	}
	return nil
}

// stop sends SIGTERM and wants a clean exit within 60 seconds.
func (s *server) stop() error {
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case err := <-s.done:
		s.done <- err
		return err
	case <-time.After(60 * time.Second):
		return errors.New("still running 60s after SIGTERM")
	}
}

// The sizes table has one row per target, with the true size.
func TestSizesTable(t *testing.T) {
	dir, out := built(t)
	rows := map[string]int64{}
	row := regexp.MustCompile("(?m)^\\| linux-(\\w+) \\| `make GOARCH=[^`]+` \\| [0-9.]+ MiB \\((\\d+) bytes\\) \\|$")
	for _, m := range row.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.ParseInt(m[2], 10, 64)
		rows[m[1]] = n
	}
	for _, tg := range targets {
		st, err := os.Stat(distFile(dir, tg, ""))
		if err != nil {
			t.Fatal(err)
		}
		if rows[tg.name] != st.Size() {
			t.Errorf("make sizes: linux-%s %d bytes, file has %d", tg.name, rows[tg.name], st.Size())
		}
	}
	if t.Failed() {
		t.Logf("make output:\n%s", out)
	}
}
