//go:build linux && amd64

package main

// Diskless boot, end to end: a Linux kernel from Debian's archive boots in
// qemu (TCG) with its root file system on an ext4 image that the real
// boardnbd binary serves, through the two clients that boot machines:
//
//   - the kernel's own NBD client, set up by Debian's nbd-client from an
//     initramfs, over a tap device (simple replies only), and
//   - qemu's NBD block driver, the VM's disk being an nbd:// URI
//     (structured replies).
//
// The root file system's /sbin/init (testdata/boot/root-init) checks a
// known file, read through the page cache and again with 1 MiB direct
// reads (the kernel's client told to send requests that large, which the
// server splices), writes a file, a marker, 8 MiB in large buffered writes and
// 4 MiB in small direct writes from four writers at once, syncs, remounts
// read-only, prints "BOARDNBD-BOOT-OK" on the serial console and powers
// off; the test then reads the four files out of the image with debugfs
// and runs e2fsck.
// Every way to fail prints "BOARDNBD-BOOT-FAIL <reason>" and powers off,
// and every boot is bounded in time, so a broken server gives a reason,
// not a hang. Subtests prove that for a wrong export name, a read-only
// export, a server that loses writes and a server that never answers.
//
// Everything runs in a network namespace per subtest; its only interface
// besides lo is tap0 (10.77.0.1/24), which the VM (10.77.0.2) is plugged
// into. The kernel, busybox and the initramfs are cached under
// os.UserCacheDir()/boardnbd-boot, keyed by package version and content.
//
// Needs root, /dev/net/tun and Debian's qemu-system-x86, nbd-client,
// e2fsprogs, iproute2 and apt (for "apt-get download" of the kernel and
// busybox-static, which are never installed on the host). Every
// identifier starts with "boot".

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Limits and addresses of the boot tests.
const (
	bootQemuTimeout  = 90 * time.Second // one VM from start to power-off, under load
	bootStuckTimeout = 10 * time.Second // qemu before it starts the guest
	bootFetchTimeout = 5 * time.Minute  // apt-get update, download or install
	bootToolTimeout  = time.Minute      // mkfs, debugfs, e2fsck, ip

	bootServerIP = "10.77.0.1" // tap0 in the namespace
	bootGuestIP  = "10.77.0.2"
	bootNetmask  = "255.255.255.0"
	bootPort     = "10809"
	bootUpstream = "10810" // boardnbd's port behind the write-losing proxy

	// The kernel: Debian's cloud flavour is the smallest amd64 kernel
	// with nbd and virtio as modules and ext4 built in.
	bootKernelMeta = "linux-image-cloud-amd64"

	bootImageSize = 64 << 20
	bootKnownSize = 1 << 20

	// bootCacheFormat changes when what the cache holds changes.
	bootCacheFormat = "v1"
)

// bootModules are the modules the initramfs loads (with their
// dependencies, found in each module's .modinfo): virtio_pci for both
// devices, virtio_net for the kernel client's network, virtio_blk for
// qemu's disk, nbd for the kernel client.
var bootModules = []string{"virtio_pci", "virtio_net", "virtio_blk", "nbd"}

// bootTools maps each program the tests run to its Debian package.
var bootTools = map[string]string{
	"qemu-system-x86_64": "qemu-system-x86",
	"nbd-client":         "nbd-client",
	"mkfs.ext4":          "e2fsprogs",
	"debugfs":            "e2fsprogs",
	"e2fsck":             "e2fsprogs",
	"ip":                 "iproute2",
	"apt-get":            "apt",
	"apt-cache":          "apt",
	"dpkg-deb":           "dpkg",
	"ldd":                "libc-bin",
}

// bootArtifacts is what every boot shares, prepared once per test binary.
type bootArtifacts struct {
	kernel    string // vmlinuz
	initramfs string // cpio newc, gzip
	busybox   string // static, for the root file system
	kernelPkg string // Debian package and version, for the log
}

var bootShared struct {
	once sync.Once
	a    *bootArtifacts
	err  error
	took time.Duration
}

// bootNetnsSeq numbers the namespaces of this process.
var bootNetnsSeq atomic.Int32

// TestBootKernelClient boots with the kernel's NBD client: the initramfs
// brings up eth0 and runs "nbd-client SERVER -N EXPORT", as Debian's nbd
// initramfs does for nbdroot=SERVER,EXPORT,nbd0 root=/dev/nbd0.
func TestBootKernelClient(t *testing.T) {
	a := bootSetup(t)
	cases := []struct {
		name   string
		server string // the kind of server, as bootStart takes it
		export string // the export the guest asks for
		check  func(t *testing.T, r *bootRun)
	}{
		{"root", "boardnbd", "root", func(t *testing.T, r *bootRun) {
			r.wantOK(t)
			r.wantClient(t, bootGuestIP, "false")
			r.wantImage(t)
		}},
		{"wrong export", "boardnbd", "nosuchexport", func(t *testing.T, r *bootRun) {
			r.wantFail(t, "nbd-client "+bootServerIP+" -N nosuchexport: exit status")
			r.wantConsole(t, `no export named "nosuchexport"`) // boardnbd's reason, as nbd-client prints it
			r.wantImageUnchanged(t)
		}},
		{"read-only export", "readonly", "root", func(t *testing.T, r *bootRun) {
			r.wantFail(t, "write /boardnbd/written:", "Read-only file system")
			r.wantClient(t, bootGuestIP, "false")
			r.wantImageUnchanged(t)
		}},
		{"server loses writes", "losing", "root", func(t *testing.T, r *bootRun) {
			r.wantLostWrites(t)
		}},
		{"server never answers", "silent", "root", func(t *testing.T, r *bootRun) {
			r.wantFail(t, "no answer from the server within 10s")
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := bootStart(t, a, c.server)
			r.bootKernelClient(t, c.export)
			c.check(t, r)
		})
	}
}

// TestBootQemuClient boots with qemu's NBD block driver: the VM's disk is
// nbd://SERVER:PORT/EXPORT and its kernel mounts root=/dev/vda.
func TestBootQemuClient(t *testing.T) {
	a := bootSetup(t)
	cases := []struct {
		name   string
		server string
		export string
		check  func(t *testing.T, r *bootRun)
	}{
		{"root", "boardnbd", "root", func(t *testing.T, r *bootRun) {
			r.wantOK(t)
			r.wantClient(t, bootServerIP, "true")
			r.wantImage(t)
		}},
		{"wrong export", "boardnbd", "nosuchexport", func(t *testing.T, r *bootRun) {
			r.wantQemuRefused(t, `no export named "nosuchexport"`) // boardnbd's reason, as qemu prints it
			r.wantImageUnchanged(t)
		}},
		{"read-only export", "readonly", "root", func(t *testing.T, r *bootRun) {
			r.wantQemuRefused(t, "read-only")
			r.wantImageUnchanged(t)
		}},
		{"server loses writes", "losing", "root", func(t *testing.T, r *bootRun) {
			r.wantLostWrites(t)
		}},
		{"server never answers", "silent", "root", func(t *testing.T, r *bootRun) {
			r.wantQemuStuck(t)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := bootStart(t, a, c.server)
			if c.server == "silent" {
				// qemu has no handshake timeout: it waits for the
				// server before it starts the guest, until killed.
				r.timeout = bootStuckTimeout
			}
			r.bootQemuClient(t, c.export)
			c.check(t, r)
		})
	}
}

// ---- One boot ---------------------------------------------------------------

// bootRun is one boot: its namespace, image, server and results.
type bootRun struct {
	a      *bootArtifacts
	dir    string
	ns     string
	img    string
	imgSum string // sha256 of the image before the boot
	known  []byte // /boardnbd/known
	sum    string // its sha256
	nonce  string // on the kernel command line, written by the guest

	server  *appServer    // boardnbd, unless silent
	proxy   *bootProxy    // losing only
	silent  *atomic.Int32 // silent only: connections accepted
	timeout time.Duration // for qemu; bootQemuTimeout unless set

	// After the boot:
	console string // the serial console
	stderr  string // qemu's
	qemuErr error
	elapsed time.Duration
	stopped bool // server stopped
}

// bootStart makes a namespace with tap0, a fresh root image, and the
// server of the given kind on bootServerIP:bootPort:
//
//	boardnbd  boardnbd serving the image read-write
//	readonly  boardnbd serving it with readonly: true
//	losing    boardnbd behind a proxy that acknowledges writes and drops them
//	silent    a listener that accepts connections and never says a word
func bootStart(t *testing.T, a *bootArtifacts, kind string) *bootRun {
	t.Helper()
	r := &bootRun{a: a, dir: t.TempDir()}
	start := time.Now()
	defer func() {
		t.Logf("namespace, image and %s server ready in %v", kind, time.Since(start).Round(10*time.Millisecond))
	}()
	r.ns = bootNetns(t)
	r.known = bootRandom(bootKnownSize, 0xb007)
	sum := sha256.Sum256(r.known)
	r.sum = hex.EncodeToString(sum[:])
	var nonce [8]byte
	binary.LittleEndian.PutUint64(nonce[:], rand.Uint64())
	r.nonce = hex.EncodeToString(nonce[:])
	r.img = bootRootImage(t, r.dir, a.busybox, r.known, r.sum)
	r.imgSum = fileHex(t, r.img)

	listen := net.JoinHostPort(bootServerIP, bootPort)
	switch kind {
	case "boardnbd", "readonly":
		r.server = bootServe(t, r.ns, r.dir, r.img, listen, kind == "readonly")
	case "losing":
		r.server = bootServe(t, r.ns, r.dir, r.img, net.JoinHostPort(bootServerIP, bootUpstream), false)
		r.proxy = bootStartProxy(t, r.ns, listen, net.JoinHostPort(bootServerIP, bootUpstream))
	case "silent":
		r.silent = bootStartSilent(t, r.ns, listen)
	default:
		t.Fatalf("bootStart: unknown server kind %q", kind)
	}
	return r
}

// bootKernelClient boots with the kernel's NBD client over tap0.
func (r *bootRun) bootKernelClient(t *testing.T, export string) {
	t.Helper()
	cmdline := strings.Join([]string{
		"console=ttyS0", "panic=-1",
		fmt.Sprintf("ip=%s::%s:%s:diskless:eth0:off", bootGuestIP, bootServerIP, bootNetmask),
		fmt.Sprintf("nbdroot=%s,%s,nbd0", bootServerIP, export),
		"root=/dev/nbd0",
		"boardnbd.nonce=" + r.nonce,
	}, " ")
	r.qemu(t, cmdline,
		"-netdev", "tap,id=net0,ifname=tap0,script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=net0,mac=52:54:00:77:00:02,romfile=")
}

// bootQemuClient boots with qemu's NBD driver: qemu, in the namespace,
// connects to the server on tap0's address.
func (r *bootRun) bootQemuClient(t *testing.T, export string) {
	t.Helper()
	cmdline := strings.Join([]string{
		"console=ttyS0", "panic=-1", "root=/dev/vda", "boardnbd.nonce=" + r.nonce,
	}, " ")
	uri := fmt.Sprintf("nbd://%s/%s", net.JoinHostPort(bootServerIP, bootPort), export)
	r.qemu(t, cmdline, "-drive", "file="+uri+",format=raw,if=virtio")
}

// qemu runs the VM in the namespace until it powers off or
// r.timeout (bootQemuTimeout) passes, and records the console and qemu's
// stderr.
func (r *bootRun) qemu(t *testing.T, cmdline string, extra ...string) {
	t.Helper()
	args := []string{"netns", "exec", r.ns, "qemu-system-x86_64",
		"-accel", "tcg", "-m", "512", "-smp", "1",
		"-nodefaults", "-nographic", "-serial", "stdio", "-no-reboot",
		"-kernel", r.a.kernel, "-initrd", r.a.initramfs, "-append", cmdline,
	}
	args = append(args, extra...)
	consolePath := filepath.Join(r.dir, "console.log")
	console, err := os.Create(consolePath)
	if err != nil {
		t.Fatal(err)
	}
	defer console.Close()
	if r.timeout == 0 {
		r.timeout = bootQemuTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", args...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = console, &stderr
	cmd.WaitDelay = 5 * time.Second
	// Should this test process die, so does the VM. The kernel sends
	// Pdeathsig when the thread that forked the child ends, not the process
	// (go.dev/issue/27505), and bootInNetns ends the threads it locks: keep
	// this goroutine on its thread until qemu exits, so no bootInNetns call
	// can take the thread and end it under a running VM.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start := time.Now()
	r.qemuErr = cmd.Run()
	r.elapsed = time.Since(start)
	if ctx.Err() != nil {
		r.qemuErr = fmt.Errorf("no power-off within %v; killed (%v)", r.timeout, r.qemuErr)
	}
	text, err := os.ReadFile(consolePath)
	if err != nil {
		t.Fatal(err)
	}
	r.console, r.stderr = string(text), stderr.String()
	t.Logf("qemu ran %v: %v", r.elapsed.Round(100*time.Millisecond), bootOr(r.qemuErr, "powered off"))
	if testing.Verbose() && r.console != "" {
		t.Logf("console (last 15 lines):\n%s", bootTail(r.console, 15))
	}
}

// outcome returns the line after the guest's BOARDNBD-BOOT-OK or
// BOARDNBD-BOOT-FAIL marker, or "" if it printed neither.
func (r *bootRun) outcome() (ok bool, line string) {
	for l := range strings.Lines(r.console) {
		l = strings.TrimRight(l, "\r\n")
		if i := strings.Index(l, "BOARDNBD-BOOT-OK "); i >= 0 {
			return true, l[i+len("BOARDNBD-BOOT-OK "):]
		}
		if i := strings.Index(l, "BOARDNBD-BOOT-FAIL "); i >= 0 {
			return false, l[i+len("BOARDNBD-BOOT-FAIL "):]
		}
	}
	return false, ""
}

// report is what a failure message shows of the boot.
func (r *bootRun) report() string {
	var b strings.Builder
	fmt.Fprintf(&b, "qemu: %v after %v\n", bootOr(r.qemuErr, "exit 0"), r.elapsed.Round(100*time.Millisecond))
	if s := strings.TrimSpace(r.stderr); s != "" {
		fmt.Fprintf(&b, "qemu stderr:\n%s\n", s)
	}
	fmt.Fprintf(&b, "console (last 40 lines):\n%s\n", bootTail(r.console, 40))
	if r.server != nil {
		fmt.Fprintf(&b, "boardnbd log:\n%s\n", r.server.Log)
	}
	return b.String()
}

// stopServer stops boardnbd with SIGTERM, which must exit 0: the kernel
// client's connection is still open (the guest powered off without
// disconnecting), as it is when a real board loses power.
func (r *bootRun) stopServer(t *testing.T) {
	t.Helper()
	if r.server == nil || r.stopped {
		return
	}
	r.stopped = true
	start := time.Now()
	if err := r.server.stop(); err != nil {
		t.Fatalf("boardnbd after SIGTERM: %v (took %v); log:\n%s", err, time.Since(start).Round(time.Millisecond), r.server.Log)
	}
	t.Logf("boardnbd stopped in %v", time.Since(start).Round(time.Millisecond))
}

// wantOK checks that the guest booted, read the known file with the right
// checksum, and powered off by itself.
func (r *bootRun) wantOK(t *testing.T) {
	t.Helper()
	ok, line := r.outcome()
	switch {
	case !ok && line != "":
		t.Fatalf("guest failed: %s\n%s", line, r.report())
	case !ok:
		t.Fatalf("guest printed no BOARDNBD-BOOT line\n%s", r.report())
	case line != r.sum+" "+r.nonce:
		t.Fatalf("guest printed BOARDNBD-BOOT-OK %s, want BOARDNBD-BOOT-OK %s %s\n%s", line, r.sum, r.nonce, r.report())
	case r.qemuErr != nil:
		t.Fatalf("guest booted but qemu did not exit 0\n%s", r.report())
	}
}

// wantFail checks that the guest reported a failure whose reason contains
// every one of wants, and powered off by itself.
func (r *bootRun) wantFail(t *testing.T, wants ...string) {
	t.Helper()
	ok, line := r.outcome()
	switch {
	case ok:
		t.Fatalf("guest booted (BOARDNBD-BOOT-OK %s), want a failure %q\n%s", line, wants, r.report())
	case line == "":
		t.Fatalf("guest printed no BOARDNBD-BOOT line, want a failure %q\n%s", wants, r.report())
	case r.qemuErr != nil:
		t.Fatalf("guest reported %q but did not power off\n%s", line, r.report())
	}
	for _, w := range wants {
		if !strings.Contains(line, w) {
			t.Fatalf("guest failed with %q, want a reason containing %q\n%s", line, w, r.report())
		}
	}
	t.Logf("guest: BOARDNBD-BOOT-FAIL %s", line)
}

// wantConsole checks that the console shows want.
func (r *bootRun) wantConsole(t *testing.T, want string) {
	t.Helper()
	if !strings.Contains(r.console, want) {
		t.Fatalf("console does not show %q\n%s", want, r.report())
	}
}

// wantQemuRefused checks that qemu refused to start the VM, before the
// kernel ran, naming why (want, case-insensitively) on stderr.
func (r *bootRun) wantQemuRefused(t *testing.T, want string) {
	t.Helper()
	if ok, line := r.outcome(); ok || line != "" {
		t.Fatalf("guest ran (%q), want qemu to refuse the disk\n%s", line, r.report())
	}
	var ee *exec.ExitError
	if !errors.As(r.qemuErr, &ee) {
		t.Fatalf("qemu: %v, want an exit status naming %q\n%s", r.qemuErr, want, r.report())
	}
	if !strings.Contains(strings.ToLower(r.stderr), strings.ToLower(want)) {
		t.Fatalf("qemu refused with %q, want a reason containing %q\n%s", strings.TrimSpace(r.stderr), want, r.report())
	}
	t.Logf("qemu: %s", strings.TrimSpace(r.stderr))
}

// wantQemuStuck checks the case of a server that accepts and never
// answers, with qemu as the client: qemu connected, waited in the
// handshake without starting the guest, and the time limit ended it.
func (r *bootRun) wantQemuStuck(t *testing.T) {
	t.Helper()
	if r.silent.Load() == 0 {
		t.Fatalf("qemu never connected to the silent server\n%s", r.report())
	}
	if !strings.Contains(bootOr(r.qemuErr, ""), "no power-off within") {
		t.Fatalf("qemu: %v, want it still waiting for the server when killed\n%s", bootOr(r.qemuErr, "exit 0"), r.report())
	}
	if strings.Contains(r.console, "Linux version") {
		t.Fatalf("the guest kernel started although the disk's server never answered\n%s", r.report())
	}
	t.Logf("qemu waited for the server's greeting until killed at %v, the guest never started", r.timeout)
}

// wantClient checks boardnbd's log of the connection to the root export:
// from the guest's address over tap0 (the kernel's client) or from the
// server's own (qemu in the namespace), and which kind of replies the
// client asked for: the kernel's client never asks for structured
// replies, qemu always does.
func (r *bootRun) wantClient(t *testing.T, fromIP, structured string) {
	t.Helper()
	a, _ := r.server.Log.find(0, "client connected", map[string]string{"export": "root"})
	if a == nil {
		t.Fatalf("boardnbd logged no \"client connected\" to export root\n%s", r.report())
	}
	if host, _, _ := net.SplitHostPort(a["remote"]); host != fromIP {
		t.Errorf("client connected from %s, want from %s: %v", a["remote"], fromIP, a)
	}
	if a["structured"] != structured {
		t.Errorf("client connected with structured=%s, want structured=%s: %v", a["structured"], structured, a)
	}
}

// wantImage stops the server and checks the image: the guest's files are
// in it with the right contents and e2fsck finds the file system clean.
func (r *bootRun) wantImage(t *testing.T) {
	t.Helper()
	r.stopServer(t)
	if err := bootVerifyImage(r.img, r.known, r.sum, r.nonce); err != nil {
		t.Fatalf("after a boot that reported success: %v\n%s", err, r.report())
	}
}

// wantImageUnchanged stops the server and checks that the image is byte
// for byte what it was before the boot.
func (r *bootRun) wantImageUnchanged(t *testing.T) {
	t.Helper()
	r.stopServer(t)
	if got := fileHex(t, r.img); got != r.imgSum {
		t.Fatalf("image changed: sha256 %s, was %s\n%s", got, r.imgSum, r.report())
	}
}

// wantLostWrites checks the case of a server that loses writes: the guest
// believes it booted and wrote its files, and the check of the image,
// which the other cases pass, catches the loss with a reason.
func (r *bootRun) wantLostWrites(t *testing.T) {
	t.Helper()
	r.wantOK(t)
	r.stopServer(t)
	if n := r.proxy.dropped.Load(); n == 0 {
		t.Fatalf("the proxy dropped no writes: the guest wrote nothing?\n%s", r.report())
	}
	err := bootVerifyImage(r.img, r.known, r.sum, r.nonce)
	if err == nil {
		t.Fatalf("the image check passed although the proxy dropped %d writes", r.proxy.dropped.Load())
	}
	if !strings.Contains(err.Error(), "/boardnbd/written") {
		t.Fatalf("image check: %v, want it to name /boardnbd/written", err)
	}
	t.Logf("proxy dropped %d writes; the image check says: %v", r.proxy.dropped.Load(), err)
}

// bootVerifyImage checks an image after a successful boot, with the server
// stopped: /boardnbd/written is the known file and the line the guest
// adds, /boardnbd/marker names the boot and checksum, /boardnbd/bulk
// repeats its line for 8 MiB, each MiB of /boardnbd/burst repeats its
// writer's line, and e2fsck -fn finds no problem.
func bootVerifyImage(img string, known []byte, sum, nonce string) error {
	want := append(slices.Clone(known), "written at boot "+nonce+"\n"...)
	if err := bootDebugfsCat(img, "/boardnbd/written", want); err != nil {
		return err
	}
	if err := bootDebugfsCat(img, "/boardnbd/marker", []byte("booted "+nonce+" known="+sum+"\n")); err != nil {
		return err
	}
	line := []byte("bulk " + nonce + "\n")
	if err := bootDebugfsCat(img, "/boardnbd/bulk", bytes.Repeat(line, 8<<20/len(line)+1)[:8<<20]); err != nil {
		return err
	}
	var burst []byte
	for i := range 4 {
		line := []byte(fmt.Sprintf("burst %s writer %d\n", nonce, i))
		burst = append(burst, bytes.Repeat(line, 1<<20/len(line)+1)[:1<<20]...)
	}
	if err := bootDebugfsCat(img, "/boardnbd/burst", burst); err != nil {
		return err
	}
	out, err := bootCommand(bootToolTimeout, "e2fsck", "-fn", img)
	if err != nil {
		return fmt.Errorf("e2fsck -fn: %v\n%s", err, out)
	}
	return nil
}

// bootDebugfsCat compares a file in an ext4 image with want.
func bootDebugfsCat(img, path string, want []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), bootToolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "debugfs", "-R", "cat "+path, img)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("debugfs -R 'cat %s': %v: %s", path, err, stderr.String())
	}
	got := stdout.Bytes()
	switch {
	case strings.Contains(stderr.String(), "File not found"):
		return fmt.Errorf("%s is not in the image (writes lost?)", path)
	case len(got) != len(want):
		return fmt.Errorf("%s in the image has %d bytes, want %d", path, len(got), len(want))
	case !bytes.Equal(got, want):
		i := 0
		for got[i] == want[i] {
			i++
		}
		return fmt.Errorf("%s in the image differs from what the guest wrote at byte %d", path, i)
	}
	return nil
}

// ---- Servers ----------------------------------------------------------------

// bootServe starts boardnbd in the namespace from a YAML config serving
// img as "root" on listen, and waits for it to listen. It is stopped with
// SIGTERM when the test ends, and must then exit 0.
func bootServe(t *testing.T, ns, dir, img, listen string, readonly bool) *appServer {
	t.Helper()
	cfg := filepath.Join(dir, "boardnbd.yaml")
	text := fmt.Sprintf("version: 1\nlisten: [%q]\ndiscovery: {enabled: false}\nexports:\n  - name: root\n    path: %s\n    readonly: %t\n", listen, img, readonly)
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	// ip netns exec execs the program: the PID, and so SIGTERM, is boardnbd's.
	s := appStartProcess(t, false, "ip", "netns", "exec", ns, appBinary(t), "serve", "-c", cfg)
	s.Addr, s.Config = listen, cfg
	s.Log.wait(t, 0, "listening", map[string]string{"addr": listen})
	return s
}

// bootInNetns runs f on an OS thread that has joined the named network
// namespace, so that the sockets f makes live there. The thread is never
// returned to the Go runtime: it exits with the goroutine.
func bootInNetns(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		h, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := unix.Setns(int(h.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// bootListen listens on addr in the namespace; the listener and every
// connection accepted from it are closed when the test ends.
func bootListen(t *testing.T, ns, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	err := bootInNetns(ns, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// bootStartSilent is a server that never answers: it accepts connections
// and holds them open without a byte, until the test ends. It returns the
// count of connections accepted.
func bootStartSilent(t *testing.T, ns, addr string) *atomic.Int32 {
	t.Helper()
	ln := bootListen(t, ns, addr)
	var mu sync.Mutex
	var conns []net.Conn
	accepted := new(atomic.Int32)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			accepted.Add(1)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return accepted
}

// bootProxy forwards NBD connections to boardnbd and loses every write:
// it turns each command that changes data (WRITE, TRIM, WRITE_ZEROES)
// into a FLUSH with the same cookie, so the client hears success and the
// image never changes. Only the client's side needs decoding: the
// server's replies, simple or structured, pass through as bytes.
type bootProxy struct {
	dropped atomic.Int64
}

// The proxy's limits on what it relays.
const (
	bootMaxOption  = 64 << 10
	bootMaxPayload = 32 << 20
)

func bootStartProxy(t *testing.T, ns, addr, upstream string) *bootProxy {
	t.Helper()
	p := &bootProxy{}
	ln := bootListen(t, ns, addr)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			track(c)
			var up net.Conn
			err = bootInNetns(ns, func() (err error) {
				up, err = net.DialTimeout("tcp", upstream, 10*time.Second)
				return err
			})
			if err != nil {
				t.Logf("proxy: dial %s: %v", upstream, err)
				c.Close()
				continue
			}
			track(up)
			wg.Add(2)
			go func() {
				defer wg.Done()
				io.Copy(c, up)
				c.Close()
			}()
			go func() {
				defer wg.Done()
				if err := p.forward(up, c); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
					t.Logf("proxy: %v", err)
				}
				up.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return p
}

// forward copies the client's side of one connection to the server,
// losing writes.
func (p *bootProxy) forward(w io.Writer, r io.Reader) error {
	br := bufio.NewReader(r)
	var flags [4]byte // the client's handshake flags
	if _, err := io.ReadFull(br, flags[:]); err != nil {
		return err
	}
	if _, err := w.Write(flags[:]); err != nil {
		return err
	}
	for {
		magic, err := br.Peek(4)
		if err != nil {
			return err
		}
		switch binary.BigEndian.Uint32(magic) {
		case specMagicOpt >> 32:
			var h [16]byte // IHAVEOPT, option, length
			if _, err := io.ReadFull(br, h[:]); err != nil {
				return err
			}
			if binary.BigEndian.Uint64(h[:8]) != specMagicOpt {
				return fmt.Errorf("bad option magic %x", h[:8])
			}
			n := binary.BigEndian.Uint32(h[12:])
			if n > bootMaxOption {
				return fmt.Errorf("option %d with %d bytes of data", binary.BigEndian.Uint32(h[8:]), n)
			}
			data := make([]byte, n)
			if _, err := io.ReadFull(br, data); err != nil {
				return err
			}
			if _, err := w.Write(append(h[:], data...)); err != nil {
				return err
			}
		case specMagicRequest:
			var h [28]byte // magic, flags, type, cookie, offset, length
			if _, err := io.ReadFull(br, h[:]); err != nil {
				return err
			}
			typ, length := binary.BigEndian.Uint16(h[6:]), binary.BigEndian.Uint32(h[24:])
			switch typ {
			case specCmdWrite, specCmdTrim, specCmdWriteZeroes:
				if typ == specCmdWrite {
					if length > bootMaxPayload {
						return fmt.Errorf("write of %d bytes", length)
					}
					if _, err := br.Discard(int(length)); err != nil {
						return err
					}
				}
				p.dropped.Add(1)
				binary.BigEndian.PutUint16(h[4:], 0) // flags
				binary.BigEndian.PutUint16(h[6:], specCmdFlush)
				clear(h[16:]) // offset, length
			}
			if _, err := w.Write(h[:]); err != nil {
				return err
			}
			if typ == specCmdDisc {
				return nil
			}
		default:
			return fmt.Errorf("neither an option nor a request: %x", magic)
		}
	}
}

// bootSweepNetns deletes the namespaces that earlier runs of these tests
// left behind when they were killed before their cleanup: those whose
// name holds the ID of a process that no longer exists.
func bootSweepNetns(t *testing.T) {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		var pid, seq int
		if _, err := fmt.Sscanf(e.Name(), "boardnbd-boot-%d-%d", &pid, &seq); err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			if out, err := bootCommand(bootToolTimeout, "ip", "netns", "del", e.Name()); err != nil {
				t.Logf("ip netns del %s (left by process %d): %v: %s", e.Name(), pid, err, out)
			}
		}
	}
}

// bootNetns makes a network namespace with lo up and tap0 at
// bootServerIP/24 (for a VM to plug into), and deletes it when the test
// ends, after everything started in it has been stopped.
func bootNetns(t *testing.T) string {
	t.Helper()
	ns := fmt.Sprintf("boardnbd-boot-%d-%d", os.Getpid(), bootNetnsSeq.Add(1))
	bootMust(t, bootToolTimeout, "ip", "netns", "add", ns)
	t.Cleanup(func() {
		if out, err := bootCommand(bootToolTimeout, "ip", "netns", "del", ns); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	bootMust(t, bootToolTimeout, "ip", "-n", ns, "link", "set", "lo", "up")
	bootMust(t, bootToolTimeout, "ip", "-n", ns, "tuntap", "add", "dev", "tap0", "mode", "tap")
	bootMust(t, bootToolTimeout, "ip", "-n", ns, "addr", "add", bootServerIP+"/24", "dev", "tap0")
	bootMust(t, bootToolTimeout, "ip", "-n", ns, "link", "set", "tap0", "up")
	return ns
}

// ---- Root file system -------------------------------------------------------

// bootRootImage makes dir/root.img, an ext4 file system holding busybox,
// /sbin/init from testdata/boot/root-init with the known file's checksum
// baked in, and the known file as /boardnbd/known.
func bootRootImage(t *testing.T, dir, busybox string, known []byte, sum string) string {
	t.Helper()
	tree := filepath.Join(dir, "root")
	for _, d := range []string{"bin", "sbin", "dev", "proc", "sys", "tmp", "boardnbd"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bootCopy(t, busybox, filepath.Join(tree, "bin", "busybox"), 0o755)
	// The applets as links made here: the read-only case cannot make them.
	out := bootMust(t, bootToolTimeout, busybox, "--list")
	for _, applet := range strings.Fields(out) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(tree, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	script, err := os.ReadFile(filepath.Join("testdata", "boot", "root-init"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(script, []byte("@KNOWN_SHA256@")) {
		t.Fatal("testdata/boot/root-init has no @KNOWN_SHA256@ to replace")
	}
	script = bytes.ReplaceAll(script, []byte("@KNOWN_SHA256@"), []byte(sum))
	if err := os.WriteFile(filepath.Join(tree, "sbin", "init"), script, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "boardnbd", "known"), known, 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "root.img")
	bootMust(t, bootToolTimeout, "mkfs.ext4", "-q", "-F", "-L", "boardnbd-root", "-d", tree, img, fmt.Sprint(bootImageSize>>10))
	return img
}

// bootRandom returns n reproducible pseudo-random bytes.
func bootRandom(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, ^seed))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

// ---- Kernel, busybox and initramfs, cached ----------------------------------

// bootSetup checks the privileges and tools and returns the kernel and
// initramfs, prepared once per test binary (or taken from the cache).
func bootSetup(t *testing.T) *bootArtifacts {
	t.Helper()
	if os.Geteuid() != 0 {
		appSkipOrFail(t, "the boot tests need root (network namespaces, tap devices)")
	}
	if testing.Short() {
		t.Skip("boots virtual machines; not in -short")
	}
	bootNeedTools(t)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		appSkipOrFail(t, "no /dev/net/tun for the VM's tap device: %v", err)
	}
	bootShared.once.Do(func() {
		bootSweepNetns(t)
		start := time.Now()
		bootShared.a, bootShared.err = bootPrepare()
		bootShared.took = time.Since(start)
	})
	if bootShared.err != nil {
		t.Fatal(bootShared.err)
	}
	t.Logf("kernel %s; kernel and initramfs ready in %v", bootShared.a.kernelPkg, bootShared.took.Round(10*time.Millisecond))
	start := time.Now()
	appBinary(t) // built once per test binary, maybe by an earlier test
	t.Logf("boardnbd binary ready in %v", time.Since(start).Round(10*time.Millisecond))
	return bootShared.a
}

// bootNeedTools skips the test, or in CI first installs the missing
// packages and fails if that does not bring them.
func bootNeedTools(t *testing.T) {
	t.Helper()
	missing := func() (cmds, pkgs []string) {
		for name, pkg := range bootTools {
			if _, err := exec.LookPath(name); err != nil {
				cmds = append(cmds, name)
				if !slices.Contains(pkgs, pkg) {
					pkgs = append(pkgs, pkg)
				}
			}
		}
		sort.Strings(cmds)
		sort.Strings(pkgs)
		return cmds, pkgs
	}
	cmds, pkgs := missing()
	if len(cmds) == 0 {
		return
	}
	if !appCI() {
		t.Skipf("missing %s (apt-get install --no-install-recommends %s)", strings.Join(cmds, ", "), strings.Join(pkgs, " "))
	}
	t.Logf("missing %s: installing %s", strings.Join(cmds, ", "), strings.Join(pkgs, " "))
	if out, err := bootCommand(bootFetchTimeout, "apt-get", "update", "-qq"); err != nil {
		t.Fatalf("apt-get update: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), bootFetchTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "apt-get", append([]string{"install", "-y", "-qq", "--no-install-recommends"}, pkgs...)...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("apt-get install %s: %v\n%s", strings.Join(pkgs, " "), err, out)
	}
	if still, _ := missing(); len(still) > 0 {
		t.Fatalf("after apt-get install %s, still missing: %s", strings.Join(pkgs, " "), strings.Join(still, ", "))
	}
}

// bootPrepare fetches (or finds in the cache) the kernel with its modules
// and busybox-static, and builds (or finds) the initramfs.
func bootPrepare() (*bootArtifacts, error) {
	cache, err := os.UserCacheDir()
	if err == nil {
		cache = filepath.Join(cache, "boardnbd-boot")
		err = os.MkdirAll(cache, 0o755)
	}
	if err != nil {
		// No cache: work in a directory that this run removes.
		cache = filepath.Join(interop.dir, "boot-cache")
		if err := os.MkdirAll(cache, 0o755); err != nil {
			return nil, err
		}
	}
	recs, err := bootAptShow(bootKernelMeta, "busybox-static")
	if err != nil {
		return nil, err
	}
	kpkg, kver, err := bootKernelPackage(recs[bootKernelMeta])
	if err != nil {
		return nil, err
	}
	kdir, err := bootCached(filepath.Join(cache, bootCacheFormat, "kernel", kpkg+"_"+kver), func(dir string) error {
		return bootFetchKernel(kpkg, kver, dir)
	})
	if err != nil {
		return nil, err
	}
	bver, err := bootField(recs["busybox-static"], "Version")
	if err != nil {
		return nil, err
	}
	bdir, err := bootCached(filepath.Join(cache, bootCacheFormat, "busybox-static", bver), func(dir string) error {
		x, err := bootFetchDeb("busybox-static", bver)
		if err != nil {
			return err
		}
		defer os.RemoveAll(x)
		return bootCopyFile(filepath.Join(x, "bin", "busybox"), filepath.Join(dir, "busybox"), 0o755)
	})
	if err != nil {
		return nil, err
	}
	files, err := bootInitramfsFiles(kdir, filepath.Join(bdir, "busybox"))
	if err != nil {
		return nil, err
	}
	key := sha256.New()
	for _, f := range files {
		fmt.Fprintf(key, "%s %o %d %d:%d %q\n", f.name, f.mode, len(f.data), f.major, f.minor, f.link)
		key.Write(f.data)
	}
	initramfs := filepath.Join(cache, bootCacheFormat, "initramfs-"+hex.EncodeToString(key.Sum(nil))[:16]+".cpio.gz")
	if _, err := os.Stat(initramfs); err != nil {
		if err := bootWriteInitramfs(initramfs, files); err != nil {
			return nil, err
		}
	}
	bootPrune(filepath.Dir(kdir), "", kdir)
	bootPrune(filepath.Dir(bdir), "", bdir)
	bootPrune(filepath.Dir(initramfs), "initramfs-", initramfs)
	return &bootArtifacts{
		kernel:    filepath.Join(kdir, "vmlinuz"),
		initramfs: initramfs,
		busybox:   filepath.Join(bdir, "busybox"),
		kernelPkg: kpkg + " " + kver,
	}, nil
}

// bootCached returns dir, filling it with fill first unless an earlier
// run did. fill works in a fresh directory that is renamed into place
// only when it succeeds, so an interrupted run leaves no half a cache.
func bootCached(dir string, fill func(dir string) error) (string, error) {
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".fill-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if err := fill(tmp); err != nil {
		return "", err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, statErr := os.Stat(dir); statErr == nil {
			return dir, nil // another run filled it first
		}
		return "", err
	}
	return dir, nil
}

// bootPrune removes the entries of the cache directory dir whose names
// start with prefix, except keep, once they are a day old: older package
// versions and initramfs images of other contents go, so the cache does
// not grow with each kernel update, while a concurrent run of another
// tree keeps what it just made.
func bootPrune(dir, prefix, keep string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if p == keep || strings.HasPrefix(e.Name(), ".") || !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > 24*time.Hour {
			os.RemoveAll(p)
		}
	}
}

// bootKernelPackage returns the versioned kernel package that the
// bootKernelMeta package depends on, and its version, from its apt record.
func bootKernelPackage(rec string) (pkg, version string, err error) {
	deps, err := bootField(rec, "Depends")
	if err != nil {
		return "", "", err
	}
	// "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"
	for dep := range strings.SplitSeq(deps, ",") {
		f := strings.Fields(strings.NewReplacer("(", " ", ")", " ").Replace(dep))
		if len(f) == 3 && strings.HasPrefix(f[0], "linux-image-") && f[1] == "=" {
			return f[0], f[2], nil
		}
	}
	return "", "", fmt.Errorf("%s depends on no versioned linux-image- package: %s", bootKernelMeta, deps)
}

// bootField returns a field of an apt record.
func bootField(rec, name string) (string, error) {
	for line := range strings.Lines(rec) {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("no %s: in the apt record\n%s", name, rec)
}

// bootAptShow returns apt-cache's records of the candidate versions of
// pkgs (one call: apt-cache takes seconds to load its lists), running
// apt-get update first if apt does not know them yet.
func bootAptShow(pkgs ...string) (map[string]string, error) {
	show := func() (map[string]string, error) {
		args := append([]string{"show", "--no-all-versions"}, pkgs...)
		out, err := bootCommand(bootToolTimeout, "apt-cache", args...)
		if err != nil {
			return nil, fmt.Errorf("apt-cache show %s: %v\n%s", strings.Join(pkgs, " "), err, out)
		}
		recs := map[string]string{}
		for rec := range strings.SplitSeq(out, "\n\n") {
			if name, err := bootField(rec, "Package"); err == nil {
				recs[name] = rec
			}
		}
		for _, p := range pkgs {
			if recs[p] == "" {
				return nil, fmt.Errorf("apt-cache show %s: no record of %s", strings.Join(pkgs, " "), p)
			}
		}
		return recs, nil
	}
	if recs, err := show(); err == nil {
		return recs, nil
	}
	if out, err := bootCommand(bootFetchTimeout, "apt-get", "update", "-qq"); err != nil {
		return nil, fmt.Errorf("apt-get update: %v\n%s", err, out)
	}
	return show()
}

// bootFetchDeb downloads pkg=version with apt-get download (not
// installing it) and unpacks it with dpkg-deb -x into a new temporary
// directory, which it returns.
func bootFetchDeb(pkg, version string) (string, error) {
	dl, err := os.MkdirTemp("", "boardnbd-boot-deb-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dl)
	// apt's download user must be able to write here.
	if err := os.Chmod(dl, 0o777); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), bootFetchTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-qq", pkg+"="+version)
	cmd.Dir = dl
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download %s=%s: %v\n%s", pkg, version, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download %s=%s: got %q, want one .deb", pkg, version, debs)
	}
	x, err := os.MkdirTemp("", "boardnbd-boot-x-")
	if err != nil {
		return "", err
	}
	if out, err := bootCommand(bootFetchTimeout, "dpkg-deb", "-x", debs[0], x); err != nil {
		os.RemoveAll(x)
		return "", fmt.Errorf("dpkg-deb -x %s: %v\n%s", debs[0], err, out)
	}
	return x, nil
}

// bootFetchKernel fills dir with the kernel image (vmlinuz) and, under
// modules/, the modules of bootModules and their dependencies,
// uncompressed (busybox's insmod reads plain .ko files), with
// modules/order listing them dependencies first.
func bootFetchKernel(pkg, version, dir string) error {
	x, err := bootFetchDeb(pkg, version)
	if err != nil {
		return err
	}
	defer os.RemoveAll(x)
	kernels, _ := filepath.Glob(filepath.Join(x, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		return fmt.Errorf("%s: got kernels %q, want one /boot/vmlinuz-*", pkg, kernels)
	}
	if err := bootCopyFile(kernels[0], filepath.Join(dir, "vmlinuz"), 0o644); err != nil {
		return err
	}

	// Every module file of the package by module name. The package has no
	// modules.dep (depmod makes it on installation); each module's
	// .modinfo names its dependencies.
	paths := map[string]string{}
	err = filepath.WalkDir(filepath.Join(x, "lib", "modules"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		base := filepath.Base(p)
		if i := strings.Index(base, ".ko"); i > 0 {
			paths[strings.ReplaceAll(base[:i], "-", "_")] = p
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "modules"), 0o755); err != nil {
		return err
	}
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name, from string) error
	visit = func(name, from string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("module dependency cycle at %s", name)
		case 2:
			return nil
		}
		state[name] = 1
		p, ok := paths[name]
		if !ok {
			return fmt.Errorf("%s: no module %s (needed by %s)", pkg, name, from)
		}
		data, err := bootUncompressModule(p)
		if err != nil {
			return err
		}
		deps, err := bootModuleDepends(data)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		for _, dep := range deps {
			if err := visit(dep, name); err != nil {
				return err
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "modules", name+".ko"), data, 0o644); err != nil {
			return err
		}
		state[name] = 2
		order = append(order, name+".ko")
		return nil
	}
	for _, m := range bootModules {
		if err := visit(m, "the boot tests"); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, "modules", "order"), []byte(strings.Join(order, "\n")+"\n"), 0o644)
}

// bootUncompressModule returns a module file's contents, uncompressed.
func bootUncompressModule(p string) ([]byte, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var tool string
	switch {
	case strings.HasSuffix(p, ".ko"):
		return data, nil
	case strings.HasSuffix(p, ".ko.gz"):
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		return io.ReadAll(zr)
	case strings.HasSuffix(p, ".ko.xz"):
		tool = "xz"
	case strings.HasSuffix(p, ".ko.zst"):
		tool = "zstd"
	default:
		return nil, fmt.Errorf("%s: unknown module compression", p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), bootToolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, "-dc")
	cmd.Stdin = bytes.NewReader(data)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s -dc < %s: %v: %s", tool, p, err, stderr.String())
	}
	return out, nil
}

// bootModuleDepends returns the "depends=" of a module's .modinfo.
func bootModuleDepends(ko []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, err
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, errors.New("no .modinfo section")
	}
	info, err := sec.Data()
	if err != nil {
		return nil, err
	}
	for field := range bytes.SplitSeq(info, []byte{0}) {
		if deps, ok := bytes.CutPrefix(field, []byte("depends=")); ok {
			if len(deps) == 0 {
				return nil, nil
			}
			return strings.Split(string(deps), ","), nil
		}
	}
	return nil, nil
}

// bootFile is one entry of the initramfs.
type bootFile struct {
	name         string // without the leading slash
	mode         uint32 // with the type bits
	data         []byte
	link         string // symlink target
	major, minor uint32 // device nodes
}

// bootInitramfsFiles lists the initramfs: testdata/boot/initramfs-init as
// /init, busybox, the modules, the host's nbd-client with the shared
// libraries and dynamic loader that ldd names, and /dev/console.
func bootInitramfsFiles(kdir, busybox string) ([]bootFile, error) {
	var files []bootFile
	dirs := map[string]bool{}
	var mkdirs func(name string)
	mkdirs = func(name string) {
		if name == "." || dirs[name] {
			return
		}
		mkdirs(filepath.Dir(name))
		dirs[name] = true
		files = append(files, bootFile{name: name, mode: syscall.S_IFDIR | 0o755})
	}
	add := func(name string, mode uint32, data []byte) {
		mkdirs(filepath.Dir(name))
		files = append(files, bootFile{name: name, mode: syscall.S_IFREG | mode, data: data})
	}
	addFile := func(name, src string, mode uint32) error {
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		add(name, mode, data)
		return nil
	}
	for _, d := range []string{"bin", "sbin", "etc", "dev", "proc", "sys", "newroot", "run", "tmp"} {
		mkdirs(d)
	}
	files = append(files, bootFile{name: "dev/console", mode: syscall.S_IFCHR | 0o600, major: 5, minor: 1})
	if err := addFile("init", filepath.Join("testdata", "boot", "initramfs-init"), 0o755); err != nil {
		return nil, err
	}
	if err := addFile("bin/busybox", busybox, 0o755); err != nil {
		return nil, err
	}
	order, err := os.ReadFile(filepath.Join(kdir, "modules", "order"))
	if err != nil {
		return nil, err
	}
	for _, m := range strings.Fields(string(order)) {
		if err := addFile("lib/modules/"+m, filepath.Join(kdir, "modules", m), 0o644); err != nil {
			return nil, err
		}
	}
	add("etc/modules-boot", 0o644, order)

	nbdClient, err := exec.LookPath("nbd-client")
	if err != nil {
		return nil, err
	}
	if err := addFile("sbin/nbd-client", nbdClient, 0o755); err != nil {
		return nil, err
	}
	libs, err := bootSharedLibraries(nbdClient)
	if err != nil {
		return nil, err
	}
	for _, lib := range libs {
		// The path the loader looks for, with the contents of the file
		// it names (often a symlink to a versioned file).
		if err := addFile(strings.TrimPrefix(lib, "/"), lib, 0o755); err != nil {
			return nil, err
		}
	}
	return files, nil
}

// bootSharedLibraries returns the shared libraries and the dynamic loader
// of a program, as ldd names them.
func bootSharedLibraries(prog string) ([]string, error) {
	out, err := bootCommand(bootToolTimeout, "ldd", prog)
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %v\n%s", prog, err, out)
	}
	var libs []string
	for line := range strings.Lines(out) {
		line = strings.TrimSpace(line)
		switch {
		case strings.Contains(line, "not found"):
			return nil, fmt.Errorf("ldd %s: %s", prog, line)
		case strings.Contains(line, "=> /"):
			// libgnutls.so.30 => /lib/x86_64-linux-gnu/libgnutls.so.30 (0x...)
			p := line[strings.Index(line, "=> ")+3:]
			libs = append(libs, strings.Fields(p)[0])
		case strings.HasPrefix(line, "/"):
			// /lib64/ld-linux-x86-64.so.2 (0x...)
			libs = append(libs, strings.Fields(line)[0])
		}
	}
	if len(libs) == 0 {
		return nil, fmt.Errorf("ldd %s: no libraries in:\n%s", prog, out)
	}
	return libs, nil
}

// bootWriteInitramfs writes files as a gzip-compressed cpio archive in the
// "newc" format that the kernel unpacks, to a temporary name renamed into
// place at the end.
func bootWriteInitramfs(path string, files []bootFile) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".initramfs-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	zw, err := gzip.NewWriterLevel(f, gzip.BestSpeed)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(zw)
	pad := func(n int) {
		w.Write(make([]byte, (4-n%4)%4))
	}
	entry := func(ino int, fl bootFile) {
		data := fl.data
		if fl.link != "" {
			data = []byte(fl.link)
		}
		nlink := 1
		if fl.mode&syscall.S_IFMT == syscall.S_IFDIR {
			nlink = 2
		}
		// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
		// devminor, rdevmajor, rdevminor, namesize, check
		hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
			ino, fl.mode, 0, 0, nlink, 0, len(data), 0, 0, fl.major, fl.minor, len(fl.name)+1, 0)
		w.WriteString(hdr)
		w.WriteString(fl.name)
		w.WriteByte(0)
		pad(len(hdr) + len(fl.name) + 1)
		w.Write(data)
		pad(len(data))
	}
	for i, fl := range files {
		entry(i+1, fl)
	}
	entry(0, bootFile{name: "TRAILER!!!"})
	if err := w.Flush(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// ---- Small helpers ----------------------------------------------------------

// bootCommand runs a program with a timeout and returns its combined
// output.
func bootCommand(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (timed out after %v)", err, timeout)
	}
	return string(out), err
}

// bootMust runs a program as bootCommand does and fails the test unless it
// exits 0.
func bootMust(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := bootCommand(timeout, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func bootCopyFile(src, dst string, mode os.FileMode) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, mode)
}

func bootCopy(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	if err := bootCopyFile(src, dst, mode); err != nil {
		t.Fatal(err)
	}
}

// bootTail returns the last n lines of s.
func bootTail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(strings.ReplaceAll(s, "\r", ""), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// bootOr returns err's text, or ok for nil.
func bootOr(err error, ok string) string {
	if err == nil {
		return ok
	}
	return err.Error()
}
