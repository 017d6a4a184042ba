//go:build linux

package main

// The appliance tests run the real boardnbd binary, as a user would, against
// real storage (loop devices, ext4 file systems, image files) and real NBD
// clients (nbdinfo, nbdcopy, nbdsh, systemd-socket-activate), and check what
// those clients see and what the server logs. Helpers are in
// appliance_helpers_test.go.

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// Loop devices are served with their exact size, their logical sector as
// the minimum block size, and read-only when the device is.
func TestApplianceLoopDevices(t *testing.T) {
	appNeedRoot(t)
	appNeedTools(t, "losetup", "nbdinfo", "nbdsh")
	dir := t.TempDir()
	const (
		plainSize = 20<<20 + 3*512 // not a multiple of 4096, so a rounded size shows
		bigSize   = 8<<20 + 4096
		roSize    = 1 << 20
	)
	plainData := appRandom(plainSize, 1)
	plain := appLoop(t, appWriteFile(t, dir, "plain.img", plainData))
	big := appLoop(t, appWriteFile(t, dir, "big.img", appRandom(bigSize, 2)), "--sector-size", "4096")
	roImg := appWriteFile(t, dir, "ro.img", appRandom(roSize, 3))
	ro := appLoop(t, roImg, "-r")
	roHash := fileHex(t, roImg)

	s := appServe(t, dir, fmt.Sprintf("  - {name: plain, path: %s}\n  - {name: big, path: %s}\n  - {name: ro, path: %s}\n",
		plain, big, ro))

	tests := []struct {
		export   string
		size     int64
		minBlock int64
		readOnly bool
	}{
		{"plain", plainSize, 512, false},
		{"big", bigSize, 4096, false},
		{"ro", roSize, 512, true},
	}
	for _, tt := range tests {
		t.Run(tt.export, func(t *testing.T) {
			got := appNbdinfoOne(t, s.URI(tt.export))
			if got.Size != tt.size || got.BlockSizeMinimum != tt.minBlock || got.ReadOnly != tt.readOnly {
				t.Errorf("nbdinfo %s: size %d, block_size_minimum %d, is_read_only %v; want %d, %d, %v",
					tt.export, got.Size, got.BlockSizeMinimum, got.ReadOnly, tt.size, tt.minBlock, tt.readOnly)
			}
			s.Log.wait(t, 0, "export ready", map[string]string{
				"export": tt.export, "size": strconv.FormatInt(tt.size, 10), "readonly": strconv.FormatBool(tt.readOnly)})
		})
	}

	// The last sector comes from the end of the device, so the size is
	// not just claimed.
	if got := appNbdshRead(t, s.URI("plain"), plainSize-4096, 4096); !bytes.Equal(got, plainData[plainSize-4096:]) {
		t.Errorf("nbdsh pread(4096, %d) on plain: not the device's last 4096 bytes", plainSize-4096)
	}

	// The server, not libnbd, refuses the write: strict mode is off.
	if got := appNbdshWrite(t, s.URI("ro"), 0, make([]byte, 4096)); got != "EPERM" {
		t.Errorf("nbdsh pwrite(off=0) to the losetup -r export = %s, want EPERM", got)
	}
	s.Stop(t)
	if h := fileHex(t, roImg); h != roHash {
		t.Errorf("the image under the losetup -r device changed")
	}
}

// boardnbd check shows what would be served: size, sectors, and why an
// export is read-only.
func TestApplianceCheck(t *testing.T) {
	appNeedRoot(t)
	appNeedTools(t, "losetup")
	dir := t.TempDir()
	big := appLoop(t, appWriteFile(t, dir, "big.img", make([]byte, 8<<20+4096)), "--sector-size", "4096")
	ro := appLoop(t, appWriteFile(t, dir, "ro.img", make([]byte, 1<<20)), "-r")
	appWriteFile(t, dir, "disk.img", make([]byte, 3<<20))
	cfg := filepath.Join(dir, "check.yaml")
	appWriteRaw(t, cfg, appConfig(appFreeAddr(t), fmt.Sprintf(
		"  - {name: big, path: %s}\n  - {name: ro, path: %s}\n  - {name: image, path: disk.img}\n", big, ro)))

	out := appRun(t, appBinary(t), "check", "-c", cfg)
	sections := map[string]string{}
	for _, sec := range strings.Split(out, "\nexport ")[1:] {
		name, _, _ := strings.Cut(sec, " ")
		sections[strings.Trim(name, `"`)] = sec
	}
	tests := []struct {
		export string
		want   []string // regular expressions, each matching a line
	}{
		{"big", []string{
			`(?m)^\s+path\s+` + regexp.QuoteMeta(big) + `$`,
			`(?m)^\s+kind\s+block device$`,
			`(?m)^\s+size\s+8392704 bytes \(8\.0 MiB\)$`,
			`(?m)^\s+sectors\s+4096 logical, 4096 physical$`,
			`(?m)^\s+read-only\s+no$`,
			`(?m)^\s+rotational\s+(true|false)$`,
		}},
		{"ro", []string{
			`(?m)^\s+size\s+1048576 bytes`,
			`(?m)^\s+sectors\s+512 logical`,
			`(?m)^\s+read-only\s+yes \(.*write-protected.*losetup -r.*\)$`,
		}},
		{"image", []string{
			`(?m)^\s+path\s+` + regexp.QuoteMeta(filepath.Join(dir, "disk.img")) + `$`,
			`(?m)^\s+size\s+3145728 bytes \(3\.0 MiB\)$`,
			`(?m)^\s+read-only\s+no$`,
		}},
	}
	for _, tt := range tests {
		sec, ok := sections[tt.export]
		if !ok {
			t.Errorf("boardnbd check shows no export %q:\n%s", tt.export, out)
			continue
		}
		for _, re := range tt.want {
			if !regexp.MustCompile(re).MatchString(sec) {
				t.Errorf("boardnbd check, export %q: no line matching %s in:\n%s", tt.export, re, sec)
			}
		}
	}
}

// A config with mistakes on two lines: check names both with their lines
// and exits 1, and serve refuses to start, naming them too.
func TestApplianceBadConfig(t *testing.T) {
	dir := t.TempDir()
	appWriteFile(t, dir, "a.img", make([]byte, 1<<20))
	appWriteFile(t, dir, "b.img", make([]byte, 1<<20))
	cfg := filepath.Join(dir, "bad.yaml")
	appWriteRaw(t, cfg, `version: 1
listen: ["127.0.0.1:1"]
discovery: {enabled: false}
exports:
  - name: a
    path: a.img
    readonly: perhaps
  - name: b
    path: b.img
    sise: 10
`)
	want := []string{cfg + ":7: ", "readonly", cfg + ":10: ", "sise"}
	for _, args := range [][]string{{"check", "-c", cfg}, {"serve", "-c", cfg}} {
		stdout, stderr, err := appRunErr(appBinary(t), args...)
		if code := appExitCode(err); code != 1 {
			t.Errorf("boardnbd %s: exit status %d (%v), want 1\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, err, stdout, stderr)
		}
		for _, w := range want {
			if !strings.Contains(stderr, w) {
				t.Errorf("boardnbd %s: stderr does not say %q:\n%s", strings.Join(args, " "), w, stderr)
			}
		}
	}
}

// Copy-on-write never writes the base; a connection's overlay ends with it,
// a persistent overlay outlives the server.
func TestApplianceCopyOnWrite(t *testing.T) {
	appNeedTools(t, "nbdinfo", "nbdsh")
	dir := t.TempDir()
	const size = 4 << 20
	connBase := appWriteFile(t, dir, "conn.img", appRandom(size, 10))
	persBase := appWriteFile(t, dir, "pers.img", appRandom(size, 11))
	hashes := map[string]string{connBase: fileHex(t, connBase), persBase: fileHex(t, persBase)}
	s := appServe(t, dir, `  - {name: conn, path: conn.img, copy_on_write: connection}
  - {name: pers, path: pers.img, copy_on_write: persistent, overlay: pers.overlay}
`)

	// A connection sees its own writes...
	data := appRandom(64<<10, 12)
	script := fmt.Sprintf(`data = open(%q, "rb").read()
h.pwrite(data, 4096)
print(h.pread(len(data), 4096) == data)
`, appWriteFile(t, t.TempDir(), "data", data))
	if got := strings.TrimSpace(appNbdsh(t, s.URI("conn"), script)); got != "True" {
		t.Errorf("copy_on_write: connection: pread after pwrite in one connection returned other bytes (%s)", got)
	}
	// ...and the next one the base again.
	base, _ := os.ReadFile(connBase)
	if got := appNbdshRead(t, s.URI("conn"), 4096, int64(len(data))); !bytes.Equal(got, base[4096:4096+len(data)]) {
		t.Errorf("copy_on_write: connection: a second connection does not read the base at off=4096")
	}
	// Private overlays must not be advertised as coherent across
	// connections.
	if info := appNbdinfoOne(t, s.URI("conn")); info.CanMultiConn || info.ReadOnly {
		t.Errorf("nbdinfo conn: can_multi_conn %v, is_read_only %v; want false, false", info.CanMultiConn, info.ReadOnly)
	}

	pdata := appRandom(12288, 13)
	if got := appNbdshWrite(t, s.URI("pers"), 8192, pdata); got != "ok" {
		t.Fatalf("copy_on_write: persistent: pwrite = %s", got)
	}
	s.Stop(t)
	if fi, err := os.Stat(filepath.Join(dir, "pers.overlay")); err != nil || fi.Size() == 0 {
		t.Errorf("overlay file after the write: %v, %v; want a non-empty file", fi, err)
	}
	s = appServeConfig(t, s.Config, s.Addr)
	if got := appNbdshRead(t, s.URI("pers"), 8192, int64(len(pdata))); !bytes.Equal(got, pdata) {
		t.Errorf("copy_on_write: persistent: after a restart, pread(off=8192) does not return what was written")
	}
	pbase, _ := os.ReadFile(persBase)
	if got := appNbdshRead(t, s.URI("pers"), 64<<10, 4096); !bytes.Equal(got, pbase[64<<10:64<<10+4096]) {
		t.Errorf("copy_on_write: persistent: unwritten range off=65536 does not read the base")
	}
	s.Stop(t)
	for path, h := range hashes {
		if got := fileHex(t, path); got != h {
			t.Errorf("base %s changed under copy-on-write: sha256 %s, was %s", filepath.Base(path), got, h)
		}
	}
}

// offset and size serve a slice and refuse to write past it; multifile
// serves the parts one after the other.
func TestAppliancePartialAndMultifile(t *testing.T) {
	appNeedTools(t, "nbdinfo", "nbdcopy", "nbdsh")
	dir := t.TempDir()
	const (
		off   = 1 << 20
		slice = 2 << 20
	)
	img := appWriteFile(t, dir, "whole.img", appRandom(8<<20, 20))
	whole, _ := os.ReadFile(img)
	parts := [][]byte{appRandom(1<<20, 21), appRandom(512<<10, 22), appRandom(1536<<10, 23)}
	for i, p := range parts {
		appWriteFile(t, dir, fmt.Sprintf("disk.%d", i), p)
	}
	s := appServe(t, dir, fmt.Sprintf(`  - {name: part, path: whole.img, offset: %d, size: %d}
  - {name: multi, path: disk, multifile: true}
`, off, slice))

	t.Run("partial", func(t *testing.T) {
		if info := appNbdinfoOne(t, s.URI("part")); info.Size != slice {
			t.Errorf("nbdinfo part: size %d, want %d", info.Size, slice)
		}
		if got := appNbdcopy(t, s.URI("part")); !bytes.Equal(got, whole[off:off+slice]) {
			t.Errorf("nbdcopy part: %d bytes, not the slice [%d, %d) of the image", len(got), off, off+slice)
		}
		if got := appNbdshWrite(t, s.URI("part"), slice-512, make([]byte, 4096)); got != "ENOSPC" {
			t.Errorf("nbdsh pwrite(4096 bytes, off=%d) across the end of the slice = %s, want ENOSPC", slice-512, got)
		}
		data := appRandom(4096, 24)
		if got := appNbdshWrite(t, s.URI("part"), 0, data); got != "ok" {
			t.Fatalf("nbdsh pwrite(off=0) = %s, want ok", got)
		}
		after, _ := os.ReadFile(img)
		if !bytes.Equal(after[off:off+4096], data) {
			t.Errorf("a write at export offset 0 did not land at image offset %d", off)
		}
		if !bytes.Equal(after[:off], whole[:off]) || !bytes.Equal(after[off+4096:], whole[off+4096:]) {
			t.Errorf("bytes of the image outside the written range changed")
		}
	})
	t.Run("multifile", func(t *testing.T) {
		want := bytes.Join(parts, nil)
		if info := appNbdinfoOne(t, s.URI("multi")); info.Size != int64(len(want)) {
			t.Errorf("nbdinfo multi: size %d, want %d", info.Size, len(want))
		}
		if got := appNbdcopy(t, s.URI("multi")); !bytes.Equal(got, want) {
			t.Errorf("nbdcopy multi: %d bytes, not disk.0, disk.1, disk.2 concatenated (%d bytes)", len(got), len(want))
		}
	})
}

// %s in a path serves each client address its own image; an allow list
// hides the export from other addresses.
func TestAppliancePerClientAndAllow(t *testing.T) {
	dir := t.TempDir()
	images := map[string][]byte{
		"127.0.0.2": appRandom(1<<20, 30),
		"127.0.0.3": appRandom(2<<20, 31),
	}
	for ip, data := range images {
		appWriteFile(t, dir, "img-"+ip, data)
	}
	appWriteFile(t, dir, "pub.img", make([]byte, 1<<20))
	s := appServe(t, dir, `  - name: byclient
    path: img-%s
    allow: [127.0.0.2/32, 127.0.0.3/32]
  - {name: public, path: pub.img}
`)
	for ip, data := range images {
		t.Run(ip, func(t *testing.T) {
			cl := appDial(t, ip, s.Addr)
			if got, want := cl.List(t), []string{"byclient", "public"}; !slices.Equal(got, want) {
				t.Errorf("NBD_OPT_LIST from %s = %q, want %q", ip, got, want)
			}
			if r := cl.Go(t, "byclient"); r != specRepAck {
				t.Fatalf("NBD_OPT_GO byclient from %s = reply %#x, want NBD_REP_ACK", ip, r)
			}
			if cl.size != uint64(len(data)) {
				t.Errorf("size of byclient for %s = %d, want %d (img-%s)", ip, cl.size, len(data), ip)
			}
			for _, off := range []uint64{0, cl.size - 4096} {
				got, errno := cl.Read(t, off, 4096)
				if errno != 0 || !bytes.Equal(got, data[off:off+4096]) {
					t.Errorf("Read(off=%d) from %s: errno %d, or not the bytes of img-%s", off, ip, errno, ip)
				}
			}
			cl.Close()
			s.Log.wait(t, 0, "client disconnected", map[string]string{"remote": cl.LocalAddr(), "export": "byclient"})
		})
	}
	t.Run("127.0.0.4 not allowed", func(t *testing.T) {
		cl := appDial(t, "127.0.0.4", s.Addr)
		if got, want := cl.List(t), []string{"public"}; !slices.Equal(got, want) {
			t.Errorf("NBD_OPT_LIST from 127.0.0.4 = %q, want %q", got, want)
		}
		if r := cl.Go(t, "byclient"); r != specRepErrUnknown {
			t.Errorf("NBD_OPT_GO byclient from 127.0.0.4 = reply %#x, want NBD_REP_ERR_UNKNOWN", r)
		}
		s.Log.wait(t, 0, "client refused: not in the export's allow list", map[string]string{"remote": cl.LocalAddr()})
	})
}

// A mounted device is refused at start with an error that says what to do,
// and served when allow_in_use says so.
func TestApplianceInUse(t *testing.T) {
	appNeedRoot(t)
	appNeedTools(t, "nbdsh")
	dir := t.TempDir()
	dev := appLoop(t, appWriteFile(t, dir, "fs.img", make([]byte, 16<<20)))
	appMountExt4(t, dev)

	cfg := filepath.Join(dir, "inuse.yaml")
	appWriteRaw(t, cfg, appConfig(appFreeAddr(t), fmt.Sprintf("  - {name: disk, path: %s}\n", dev)))
	_, stderr, err := appRunErr(appBinary(t), "serve", "-c", cfg)
	if appExitCode(err) <= 0 {
		t.Errorf("boardnbd serve of a mounted device: %v, want a non-zero exit", err)
	}
	for _, want := range []string{dev, "unmount", "allow_in_use: true"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("boardnbd serve of a mounted device: the error does not say %q:\n%s", want, stderr)
		}
	}

	s := appServe(t, dir, fmt.Sprintf("  - {name: disk, path: %s, allow_in_use: true}\n", dev))
	// The ext4 superblock magic, 0xEF53 little-endian at byte 1080.
	if got := appNbdshRead(t, s.URI("disk"), 1024, 512); len(got) != 512 || !bytes.Equal(got[56:58], []byte{0x53, 0xef}) {
		t.Errorf("nbdsh pread(512, 1024) of the mounted device: no ext4 magic 53ef at byte 1080")
	}
}

// A device that fails under a connected client gives it EIO replies while
// other exports serve on; when it comes back, new clients get it.
//
// The device is a loop device over a file on an ext4 file system (itself on
// a loop device) that is shut down with EXT4_IOC_SHUTDOWN, as if its disk
// had been pulled; device-mapper's error target would do too, but this
// kernel has no device-mapper. The export's path is a symlink, as
// /dev/disk/by-id is: it disappears with the device, and comes back
// pointing at the device's new node.
func TestApplianceDeviceVanishes(t *testing.T) {
	appNeedRoot(t)
	appNeedTools(t, "nbdinfo", "nbdcopy", "nbdsh")
	switch runtime.GOARCH {
	case "amd64", "386", "arm", "arm64", "riscv64", "loong64":
	default:
		t.Skip("EXT4_IOC_SHUTDOWN number is computed for the generic ioctl encoding")
	}
	dir := t.TempDir()
	outer := appLoop(t, appWriteFile(t, dir, "outer.img", make([]byte, 32<<20)))
	mnt := appMountExt4(t, outer)
	const size = 4 << 20
	oldData, newData, otherData := appRandom(size, 40), appRandom(size, 41), appRandom(size, 42)
	inner := appLoop(t, appWriteFile(t, mnt, "usb.img", oldData))
	replug := appLoop(t, appWriteFile(t, dir, "replug.img", newData))
	appWriteFile(t, dir, "other.img", otherData)
	link := filepath.Join(dir, "usb-disk")
	appSymlink(t, inner, link)

	s := appServe(t, dir, fmt.Sprintf("  - {name: usb, path: %s}\n  - {name: other, path: other.img}\n", link))
	cl := appDial(t, "", s.Addr)
	if r := cl.Go(t, "usb"); r != specRepAck {
		t.Fatalf("NBD_OPT_GO usb = reply %#x", r)
	}
	if got, errno := cl.Read(t, 0, 4096); errno != 0 || !bytes.Equal(got, oldData[:4096]) {
		t.Fatalf("Read(off=0) before the device fails: errno %d, or other bytes", errno)
	}

	appShutdownExt4(t, mnt)
	os.Remove(link)
	for _, off := range []uint64{2 << 20, 3 << 20} {
		if _, errno := cl.Read(t, off, 4096); errno != specEIO {
			t.Errorf("Read(off=%d) after the device failed: errno %d, want %d (EIO)", off, errno, specEIO)
		}
	}
	if got := appNbdcopy(t, s.URI("other")); !bytes.Equal(got, otherData) {
		t.Errorf("nbdcopy other while usb is failing: not other.img")
	}
	if _, _, err := appRunErr("nbdinfo", s.URI("usb")); err == nil {
		t.Errorf("nbdinfo usb while the device is gone: no error, want the export unavailable")
	}
	s.Log.wait(t, 0, "export could not be opened", map[string]string{"export": "usb"})
	if !s.Running() {
		t.Fatalf("server exited when the device failed (its log follows)")
	}

	appSymlink(t, replug, link)
	for _, off := range []int64{0, 2 << 20} {
		if got := appNbdshRead(t, s.URI("usb"), off, 4096); !bytes.Equal(got, newData[off:off+4096]) {
			t.Errorf("nbdsh pread(4096, %d) after the device came back: not the new device's bytes", off)
		}
	}
	cl.Close()
	a := s.Log.wait(t, 0, "client disconnected", map[string]string{"remote": cl.LocalAddr()})
	if n, _ := strconv.Atoi(a["io_errors"]); n < 2 {
		t.Errorf("client disconnected: io_errors=%q, want at least 2", a["io_errors"])
	}
}

// Storage absent at start does not stop the server: the export is listed
// but unavailable until its file appears.
func TestApplianceAbsentAtStart(t *testing.T) {
	appNeedTools(t, "nbdinfo")
	dir := t.TempDir()
	appWriteFile(t, dir, "here.img", make([]byte, 1<<20))
	s := appServe(t, dir, "  - {name: later, path: later.img}\n  - {name: here, path: here.img}\n")
	s.Log.wait(t, 0, "export unavailable: storage absent", map[string]string{"export": "later"})
	cl := appDial(t, "", s.Addr)
	if got, want := cl.List(t), []string{"later", "here"}; !slices.Equal(got, want) {
		t.Errorf("NBD_OPT_LIST while later.img is absent = %q, want %q", got, want)
	}
	if r := cl.Go(t, "later"); r != specRepErrUnknown {
		t.Errorf("NBD_OPT_GO later while later.img is absent = reply %#x, want NBD_REP_ERR_UNKNOWN", r)
	}
	data := appRandom(2<<20, 80)
	appWriteFile(t, dir, "later.img", data)
	if info := appNbdinfoOne(t, s.URI("later")); info.Size != int64(len(data)) {
		t.Errorf("nbdinfo later after later.img appeared: size %d, want %d", info.Size, len(data))
	}
	if got, want := appList(t, s), []string{"later", "here"}; !slices.Equal(got, want) {
		t.Errorf("nbdinfo --list after later.img appeared = %q, want %q", got, want)
	}
}

// appSymlink makes link point at target, replacing it atomically.
func appSymlink(t *testing.T, target, link string) {
	t.Helper()
	tmp := link + ".new"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
}

// appShutdownExt4 shuts the ext4 file system mounted at mnt down, as if its
// disk had gone: every later I/O on it fails with EIO.
func appShutdownExt4(t *testing.T, mnt string) {
	t.Helper()
	const ext4IocShutdown = 2<<30 | 4<<16 | 'X'<<8 | 125 // _IOR('X', 125, __u32)
	const noLogFlush = 2                                 // EXT4_GOING_FLAGS_NOLOGFLUSH
	d, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	flag := uint32(noLogFlush)
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, d.Fd(), ext4IocShutdown, uintptr(unsafe.Pointer(&flag))); e != 0 {
		t.Fatalf("EXT4_IOC_SHUTDOWN on %s: %v", mnt, e)
	}
}

// SIGHUP adds and removes exports and rejects a bad file, while a client of
// an export that stays keeps reading and writing.
func TestApplianceReload(t *testing.T) {
	appNeedTools(t, "nbdinfo")
	dir := t.TempDir()
	for _, name := range []string{"keep", "gone", "added"} {
		appWriteFile(t, dir, name+".img", make([]byte, 1<<20))
	}
	const (
		keep  = "  - {name: keep, path: keep.img}\n"
		gone  = "  - {name: gone, path: gone.img}\n"
		added = "  - {name: added, path: added.img}\n"
	)
	s := appServe(t, dir, keep+gone)
	cl := appDial(t, "", s.Addr)
	if r := cl.Go(t, "keep"); r != specRepAck {
		t.Fatalf("NBD_OPT_GO keep = reply %#x", r)
	}
	goneCl := appDial(t, "", s.Addr)
	if r := goneCl.Go(t, "gone"); r != specRepAck {
		t.Fatalf("NBD_OPT_GO gone = reply %#x", r)
	}
	var off uint64
	useKeep := func(when string) {
		t.Helper()
		data := appRandom(4096, off+50)
		if errno := cl.Write(t, off, data); errno != 0 {
			t.Errorf("%s: Write(off=%d) on keep: errno %d", when, off, errno)
		}
		if got, errno := cl.Read(t, off, 4096); errno != 0 || !bytes.Equal(got, data) {
			t.Errorf("%s: Read(off=%d) on keep: errno %d, or not what was written", when, off, errno)
		}
		off += 4096
	}
	useKeep("before any reload")

	steps := []struct {
		name   string
		config string // exports, or a whole file if it starts with "version"
		msg    string
		list   []string
	}{
		{"add", keep + gone + added, "configuration reloaded", []string{"keep", "gone", "added"}},
		{"remove", keep + added, "configuration reloaded", []string{"keep", "added"}},
		{"bad file", "version: 1\nexports:\n  - name: keep\n    path: keep.img\n    bogus: 1\n",
			"reload rejected; still serving the previous configuration", []string{"keep", "added"}},
	}
	for _, st := range steps {
		mark := s.Log.mark()
		if strings.HasPrefix(st.config, "version") {
			appWriteRaw(t, s.Config, st.config)
		} else {
			s.Rewrite(t, st.config)
		}
		s.Signal(t, syscall.SIGHUP)
		a := s.Log.wait(t, mark, st.msg, nil)
		if st.name == "bad file" && !strings.Contains(a["err"], s.Config+":5: ") {
			t.Errorf("reload rejected: err=%q does not name %s:5", a["err"], s.Config)
		}
		if got := appList(t, s); !slices.Equal(got, st.list) {
			t.Errorf("after SIGHUP (%s): nbdinfo --list = %q, want %q", st.name, got, st.list)
		}
		useKeep("after SIGHUP (" + st.name + ")")
	}

	// gone takes no new clients, but the one it had keeps its connection.
	nc := appDial(t, "", s.Addr)
	if r := nc.Go(t, "gone"); r != specRepErrUnknown {
		t.Errorf("NBD_OPT_GO gone after its removal = reply %#x, want NBD_REP_ERR_UNKNOWN", r)
	}
	if _, errno := goneCl.Read(t, 0, 4096); errno != 0 {
		t.Errorf("Read(off=0) by the client of removed export gone: errno %d, want 0", errno)
	}
	cl.Close()
	a := s.Log.wait(t, 0, "client disconnected", map[string]string{"remote": cl.LocalAddr()})
	if want := strconv.FormatUint(off, 10); a["read"] != want || a["written"] != want {
		t.Errorf("client disconnected: read=%s written=%s, want %s each", a["read"], a["written"], want)
	}
}

// inetd mode serves one client on standard input and output: a TCP
// connection from an inetd (systemd-socket-activate --inetd), or a socket
// pair from libnbd's connect_command.
func TestApplianceInetd(t *testing.T) {
	appNeedTools(t, "systemd-socket-activate", "nbdinfo", "nbdsh")
	dir := t.TempDir()
	data := appRandom(3<<20, 60)
	appWriteFile(t, dir, "base.img", data)
	cfg := filepath.Join(dir, "inetd.yaml")
	appWriteRaw(t, cfg, appConfig(appFreeAddr(t), "  - {name: base, path: base.img}\n"))
	bin := appBinary(t)

	t.Run("systemd-socket-activate --inetd", func(t *testing.T) {
		addr := appFreeAddr(t)
		// systemd-socket-activate itself dies of the SIGTERM; boardnbd's
		// exits are checked in its log.
		s := appStartProcess(t, true, "systemd-socket-activate", "--accept", "--inetd", "-l", addr, bin, "serve", "--inetd", "-c", cfg)
		s.Log.wait(t, 0, "Listening on "+addr+" as 3.", nil)
		for i := range 2 {
			if info := appNbdinfoOne(t, "nbd://"+addr+"/base"); info.Size != int64(len(data)) {
				t.Errorf("nbdinfo, connection %d: size %d, want %d", i, info.Size, len(data))
			}
		}
		if got := appNbdshRead(t, "nbd://"+addr+"/base", 1<<20, 4096); !bytes.Equal(got, data[1<<20:1<<20+4096]) {
			t.Errorf("nbdsh pread(4096, 1048576): not the image's bytes")
		}
		a := s.Log.wait(t, 0, "client connected", map[string]string{"export": "base"})
		if !strings.HasPrefix(a["remote"], "127.0.0.1:") {
			t.Errorf("client connected: remote=%q, want the TCP peer 127.0.0.1:port", a["remote"])
		}
		// One process per connection, each exiting 0.
		re := regexp.MustCompile(`(?m)^Child \d+ died with code (\d+)$`)
		lines := s.Log.waitFunc(t, "3 boardnbd --inetd processes exiting", func(log string) bool {
			return len(re.FindAllString(log, -1)) == 3
		})
		for _, m := range re.FindAllStringSubmatch(lines, -1) {
			if m[1] != "0" {
				t.Errorf("%s, want code 0", m[0])
			}
		}
	})
	t.Run("nbdsh connect_command", func(t *testing.T) {
		script := fmt.Sprintf(`import sys
h.connect_command([%q, "serve", "--inetd", "-c", %q])
print(h.get_size())
print(h.pread(4096, 8192).hex())
`, bin, cfg)
		stdout, stderr, err := appRunErr(appPython, "-m", "nbd", "-c", script)
		if err != nil {
			t.Fatalf("nbdsh connect_command: %v\n%s", err, stderr)
		}
		want := fmt.Sprintf("%d\n%x\n", len(data), data[8192:8192+4096])
		if stdout != want {
			t.Errorf("nbdsh connect_command: size and pread(4096, 8192) = %.80q..., want %.80q...", stdout, want)
		}
		if !strings.Contains(stderr, `msg="client connected"`) || !strings.Contains(stderr, `msg="client disconnected"`) {
			t.Errorf("boardnbd --inetd did not log the client:\n%s", stderr)
		}
	})
}

// Sockets passed by systemd (LISTEN_FDS) replace listen:.
func TestApplianceSocketActivation(t *testing.T) {
	appNeedTools(t, "systemd-socket-activate", "nbdinfo")
	dir := t.TempDir()
	data := appRandom(2<<20, 70)
	appWriteFile(t, dir, "base.img", data)
	cfg := filepath.Join(dir, "activation.yaml")
	configured := appFreeAddr(t)
	appWriteRaw(t, cfg, appConfig(configured, "  - {name: base, path: base.img}\n"))
	bin := appBinary(t)

	t.Run("systemd-socket-activate", func(t *testing.T) {
		addr := appFreeAddr(t)
		// Without --accept it execs boardnbd in its place at the first
		// connection, so the SIGTERM at the end goes to boardnbd.
		s := appStartProcess(t, false, "systemd-socket-activate", "-l", addr, bin, "serve", "-c", cfg)
		s.Log.wait(t, 0, "Listening on "+addr+" as 3.", nil)
		if info := appNbdinfoOne(t, "nbd://"+addr+"/base"); info.Size != int64(len(data)) {
			t.Errorf("nbdinfo: size %d, want %d", info.Size, len(data))
		}
		s.Log.wait(t, 0, "using sockets from systemd (socket activation); listen: is ignored", map[string]string{"sockets": "1"})
		s.Log.wait(t, 0, "listening", map[string]string{"addr": addr})
		if a, _ := s.Log.find(0, "listening", map[string]string{"addr": configured}); a != nil {
			t.Errorf("boardnbd listened on the configured %s too", configured)
		}
	})
	t.Run("nbdinfo [ CMD ]", func(t *testing.T) {
		// libnbd starts the command with a socket of its own in LISTEN_FDS.
		stdout, stderr, err := appRunErr("nbdinfo", "--size", "--", "[", bin, "serve", "-c", cfg, "]")
		if err != nil || strings.TrimSpace(stdout) != strconv.Itoa(len(data)) {
			t.Errorf("nbdinfo --size [ boardnbd serve ]: %q, %v, want %d\n%s", stdout, err, len(data), stderr)
		}
		if !strings.Contains(stderr, "using sockets from systemd") {
			t.Errorf("boardnbd started by nbdinfo did not log using systemd's sockets:\n%s", stderr)
		}
	})
}

// Every connection is logged with who, what, how much and how long.
func TestApplianceConnectionLog(t *testing.T) {
	appNeedTools(t, "nbdsh")
	dir := t.TempDir()
	appWriteFile(t, dir, "log.img", make([]byte, 1<<20))
	s := appServe(t, dir, "  - {name: log, path: log.img}\n")

	t.Run("nbdsh", func(t *testing.T) {
		mark := s.Log.mark()
		appNbdsh(t, s.URI("log"), "h.pwrite(b'x' * 4096, 0)\nh.pread(8192, 0)\nh.shutdown()\n")
		c := s.Log.wait(t, mark, "client connected", map[string]string{"export": "log"})
		if !strings.HasPrefix(c["remote"], "127.0.0.1:") {
			t.Errorf("client connected: remote=%q, want 127.0.0.1:port", c["remote"])
		}
		d := s.Log.wait(t, mark, "client disconnected", map[string]string{"remote": c["remote"]})
		appCheckDisconnect(t, d, "log", "8192", "4096")
		if r, ok := d["reason"]; ok {
			t.Errorf("client disconnected after NBD_CMD_DISC: reason=%q, want none", r)
		}
	})
	t.Run("raw client", func(t *testing.T) {
		cl := appDial(t, "127.0.0.2", s.Addr)
		if r := cl.Go(t, "log"); r != specRepAck {
			t.Fatalf("NBD_OPT_GO log = reply %#x", r)
		}
		cl.Write(t, 512, make([]byte, 512))
		cl.Read(t, 0, 1024)
		s.Log.wait(t, 0, "client connected", map[string]string{"remote": cl.LocalAddr(), "export": "log", "size": "1048576"})
		cl.Close()
		d := s.Log.wait(t, 0, "client disconnected", map[string]string{"remote": cl.LocalAddr()})
		appCheckDisconnect(t, d, "log", "1024", "512")
	})
}

// appCheckDisconnect checks the attributes of a "client disconnected" line.
func appCheckDisconnect(t *testing.T, a map[string]string, export, read, written string) {
	t.Helper()
	if a["export"] != export || a["read"] != read || a["written"] != written {
		t.Errorf("client disconnected: export=%s read=%s written=%s, want %s, %s, %s",
			a["export"], a["read"], a["written"], export, read, written)
	}
	if d, err := time.ParseDuration(a["duration"]); err != nil || d < 0 || d > appCmdTimeout {
		t.Errorf("client disconnected: duration=%q, want a duration under %v", a["duration"], appCmdTimeout)
	}
}
