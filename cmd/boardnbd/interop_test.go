//go:build linux

package main

// Interop tests: the real boardnbd binary, started as a user starts it,
// against the real NBD clients of Debian (libnbd's nbdinfo, nbdcopy and
// python bindings, qemu-img, qemu-io, fio's nbd engine) and a raw socket.
// A client that is not installed skips its test, except in CI (CI=true),
// where it fails: .ci/deps installs them all.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	kiB = 1 << 10
	miB = 1 << 20
)

// nbdinfoExport is an export as nbdinfo --json shows it.
type nbdinfoExport struct {
	Name         string   `json:"export-name"`
	Description  string   `json:"description"`
	Size         int64    `json:"export-size"`
	Contexts     []string `json:"contexts"`
	IsReadOnly   bool     `json:"is_read_only"`
	CanCache     bool     `json:"can_cache"`
	CanDF        bool     `json:"can_df"`
	CanFastZero  bool     `json:"can_fast_zero"`
	CanFlush     bool     `json:"can_flush"`
	CanFUA       bool     `json:"can_fua"`
	CanMultiConn bool     `json:"can_multi_conn"`
	CanTrim      bool     `json:"can_trim"`
	CanZero      bool     `json:"can_zero"`
	BlockMinimum int64    `json:"block_size_minimum"`
	BlockPrefer  int64    `json:"block_size_preferred"`
	BlockMaximum int64    `json:"block_size_maximum"`
}

type nbdinfoOutput struct {
	Protocol   string          `json:"protocol"`
	Structured bool            `json:"structured"`
	Exports    []nbdinfoExport `json:"exports"`
}

// mapEntry is one line of nbdinfo --map --json.
type mapEntry struct {
	Offset      int64  `json:"offset"`
	Length      int64  `json:"length"`
	Type        int    `json:"type"`
	Description string `json:"description"`
}

// nbdinfoJSON runs nbdinfo with args and decodes its JSON into out.
func nbdinfoJSON(t *testing.T, out any, args ...string) {
	t.Helper()
	r := runTool(t, 30*time.Second, requireTool(t, "nbdinfo"), args...)
	if r.code != 0 {
		t.Fatalf("nbdinfo %s failed:\n%s", strings.Join(args, " "), r)
	}
	if err := json.Unmarshal([]byte(r.stdout), out); err != nil {
		t.Fatalf("nbdinfo %s: output is not the JSON expected: %v\n%s", strings.Join(args, " "), err, r.stdout)
	}
}

// checkAdvertised checks what nbdinfo saw boardnbd advertise for an image
// file: everything for a writable export; for a read-only one, no trim
// and no zeroes.
func checkAdvertised(t *testing.T, e nbdinfoExport, readOnly bool) {
	t.Helper()
	for _, f := range []struct {
		name      string
		got, want bool
	}{
		{"is_read_only", e.IsReadOnly, readOnly},
		{"can_flush", e.CanFlush, true},
		{"can_fua", e.CanFUA, true},
		{"can_cache", e.CanCache, true},
		{"can_df", e.CanDF, true},
		{"can_multi_conn", e.CanMultiConn, true},
		{"can_trim", e.CanTrim, !readOnly},
		{"can_zero", e.CanZero, !readOnly},
		{"can_fast_zero", e.CanFastZero, !readOnly},
	} {
		if f.got != f.want {
			t.Errorf("export %q: %s = %v, want %v", e.Name, f.name, f.got, f.want)
		}
	}
	if e.BlockMinimum != 1 || e.BlockPrefer != 4096 || e.BlockMaximum != 32*miB {
		t.Errorf("export %q: block sizes (min, preferred, max) = (%d, %d, %d), want (1, 4096, %d)",
			e.Name, e.BlockMinimum, e.BlockPrefer, e.BlockMaximum, 32*miB)
	}
	if !slices.Contains(e.Contexts, "base:allocation") {
		t.Errorf("export %q: meta contexts = %q, want base:allocation among them", e.Name, e.Contexts)
	}
}

// TestInteropNbdinfo: nbdinfo lists the exports a client may see with
// their descriptions, reports each one's size and flags, and maps the
// data and holes of a sparse image exactly where they are.
func TestInteropNbdinfo(t *testing.T) {
	dir := t.TempDir()
	sparse := filepath.Join(dir, "sparse.img")
	// Data at [1M, +64K), [5M, +1M) and the last 64K; holes elsewhere.
	makeSparse(t, sparse, 8*miB, [2]int64{1 * miB, 64 * kiB}, [2]int64{5 * miB, 1 * miB}, [2]int64{8*miB - 64*kiB, 64 * kiB})
	ro := filepath.Join(dir, "ro.img")
	makeZeroImage(t, ro, 2*miB)
	s := startServer(t,
		exportSpec{Name: "disk", Path: sparse, Description: "writable sparse disk"},
		exportSpec{Name: "ro", Path: ro, Description: "read-only disk", ReadOnly: true},
		exportSpec{Name: "part", Path: sparse, Description: "2 MiB window at 1 MiB of disk", Offset: 1 * miB, Size: 2 * miB},
		// 192.0.2.0/24 is TEST-NET-1: no loopback client is in it.
		exportSpec{Name: "hidden", Path: ro, Description: "not for loopback clients", Allow: []string{"192.0.2.0/24"}},
	)

	t.Run("list", func(t *testing.T) {
		var out nbdinfoOutput
		nbdinfoJSON(t, &out, "--list", "--json", "nbd://"+s.addr)
		if out.Protocol != "newstyle-fixed" || !out.Structured {
			t.Errorf("protocol = %q, structured = %v; want newstyle-fixed with structured replies", out.Protocol, out.Structured)
		}
		want := []struct {
			name, desc string
			size       int64
			readOnly   bool
		}{
			{"disk", "writable sparse disk", 8 * miB, false},
			{"ro", "read-only disk", 2 * miB, true},
			{"part", "2 MiB window at 1 MiB of disk", 2 * miB, false},
		}
		var names []string
		for _, e := range out.Exports {
			names = append(names, e.Name)
		}
		if len(out.Exports) != len(want) {
			t.Fatalf("nbdinfo --list shows exports %q, want disk, ro, part (and not hidden, whose allow list excludes 127.0.0.1)", names)
		}
		for i, w := range want {
			e := out.Exports[i]
			if e.Name != w.name || e.Description != w.desc || e.Size != w.size || e.IsReadOnly != w.readOnly {
				t.Errorf("export %d = (%q, %q, size %d, read-only %v), want (%q, %q, size %d, read-only %v)",
					i, e.Name, e.Description, e.Size, e.IsReadOnly, w.name, w.desc, w.size, w.readOnly)
			}
		}
	})

	t.Run("flags", func(t *testing.T) {
		for _, tc := range []struct {
			name     string
			size     int64
			readOnly bool
		}{
			{"disk", 8 * miB, false},
			{"ro", 2 * miB, true},
		} {
			var out nbdinfoOutput
			nbdinfoJSON(t, &out, "--json", s.uri(tc.name))
			if len(out.Exports) != 1 {
				t.Fatalf("nbdinfo --json %s shows %d exports, want 1", s.uri(tc.name), len(out.Exports))
			}
			e := out.Exports[0]
			if e.Name != tc.name || e.Size != tc.size {
				t.Errorf("nbdinfo --json %s = export %q of size %d, want %q of size %d", s.uri(tc.name), e.Name, e.Size, tc.name, tc.size)
			}
			checkAdvertised(t, e, tc.readOnly)
		}
	})

	t.Run("map", func(t *testing.T) {
		const hole, data = 3, 0 // NBD_STATE_HOLE|NBD_STATE_ZERO, and 0
		for _, tc := range []struct {
			export string
			want   []mapEntry
		}{
			{"disk", []mapEntry{
				{0, 1 * miB, hole, "hole,zero"},
				{1 * miB, 64 * kiB, data, "data"},
				{1*miB + 64*kiB, 4*miB - 64*kiB, hole, "hole,zero"},
				{5 * miB, 1 * miB, data, "data"},
				{6 * miB, 2*miB - 64*kiB, hole, "hole,zero"},
				{8*miB - 64*kiB, 64 * kiB, data, "data"},
			}},
			// The slice starts at disk's first data run.
			{"part", []mapEntry{
				{0, 64 * kiB, data, "data"},
				{64 * kiB, 2*miB - 64*kiB, hole, "hole,zero"},
			}},
			{"ro", []mapEntry{{0, 2 * miB, hole, "hole,zero"}}},
		} {
			var got []mapEntry
			nbdinfoJSON(t, &got, "--map", "--json", s.uri(tc.export))
			if !slices.Equal(got, tc.want) {
				t.Errorf("nbdinfo --map %s =\n%v\nwant\n%v", tc.export, got, tc.want)
			}
		}
		var totals []struct {
			Size int64 `json:"size"`
			Type int   `json:"type"`
		}
		nbdinfoJSON(t, &totals, "--map=base:allocation", "--totals", "--json", s.uri("disk"))
		sum := map[int]int64{}
		for _, e := range totals {
			sum[e.Type] += e.Size
		}
		if wantData := int64(64*kiB + miB + 64*kiB); sum[data] != wantData || sum[hole] != 8*miB-wantData {
			t.Errorf("nbdinfo --map --totals disk: data %d, hole,zero %d bytes; want %d and %d", sum[data], sum[hole], wantData, 8*miB-wantData)
		}
	})
}

// TestInteropNbdcopy: a 256 MiB random image goes up to an export and
// comes back down, over one connection and over four (multi-conn), each
// way by its own nbdcopy process, so the download reads what other
// connections wrote and flushed. The source, the export's file and the
// download must all hash the same.
func TestInteropNbdcopy(t *testing.T) {
	nbdcopy := requireTool(t, "nbdcopy")
	const size = 256 * miB
	dir := imageDir(t, 3*size)
	backing := filepath.Join(dir, "export.img")
	makeZeroImage(t, backing, size)
	s := startServer(t, exportSpec{Name: "disk", Path: backing})

	for _, conns := range []int{1, 4} {
		t.Run(fmt.Sprintf("connections=%d", conns), func(t *testing.T) {
			src := filepath.Join(dir, "src.img")
			dst := filepath.Join(dir, "dst.img")
			defer os.Remove(src)
			defer os.Remove(dst)
			// A different image each round, so a round cannot pass on
			// what the previous one left.
			want := writeRandomImage(t, src, size, uint64(conns))
			c := fmt.Sprintf("--connections=%d", conns)

			if r := runTool(t, 2*time.Minute, nbdcopy, c, "--flush", src, s.uri("disk")); r.code != 0 {
				t.Fatalf("upload failed:\n%s", r)
			}
			if got := fileSHA256(t, backing); got != want {
				t.Errorf("after nbdcopy %s FILE %s: the export's file has SHA-256 %x, the source %x", c, s.uri("disk"), got, want)
			}
			if r := runTool(t, 2*time.Minute, nbdcopy, c, s.uri("disk"), dst); r.code != 0 {
				t.Fatalf("download failed:\n%s", r)
			}
			if got := fileSHA256(t, dst); got != want {
				t.Errorf("nbdcopy %s %s FILE: the download has SHA-256 %x, the source %x", c, s.uri("disk"), got, want)
			}
		})
	}
}

// TestInteropQemu: qemu-img writes, reads and compares through the export
// and sees its size; qemu-io's patterns round-trip, a wrong pattern is
// caught, and a read-only export takes no write.
func TestInteropQemu(t *testing.T) {
	qemuImg := requireTool(t, "qemu-img")
	qemuIO := requireTool(t, "qemu-io")
	const size = 64 * miB
	dir := imageDir(t, 4*size)
	src := filepath.Join(dir, "src.img")
	want := writeRandomImage(t, src, size, 7)
	backing := filepath.Join(dir, "export.img")
	makeZeroImage(t, backing, size)
	roBacking := filepath.Join(dir, "ro.img")
	makeSparse(t, roBacking, 1*miB, [2]int64{0, 64 * kiB})
	s := startServer(t,
		exportSpec{Name: "disk", Path: backing},
		exportSpec{Name: "ro", Path: roBacking, ReadOnly: true},
	)
	uri := s.uri("disk")

	t.Run("convert to the export", func(t *testing.T) {
		if r := runTool(t, time.Minute, qemuImg, "convert", "-n", "-f", "raw", "-O", "raw", src, uri); r.code != 0 {
			t.Fatalf("qemu-img convert -n FILE %s:\n%s", uri, r)
		}
		if got := fileSHA256(t, backing); got != want {
			t.Errorf("after qemu-img convert: export file SHA-256 %x, source %x", got, want)
		}
	})

	t.Run("info", func(t *testing.T) {
		r := runTool(t, 30*time.Second, qemuImg, "info", "--output=json", uri)
		var info struct {
			VirtualSize int64  `json:"virtual-size"`
			Format      string `json:"format"`
		}
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &info) != nil {
			t.Fatalf("qemu-img info --output=json %s:\n%s", uri, r)
		}
		if info.VirtualSize != size {
			t.Errorf("qemu-img info: virtual-size = %d, want %d", info.VirtualSize, size)
		}
	})

	t.Run("compare", func(t *testing.T) {
		r := runTool(t, time.Minute, qemuImg, "compare", "-f", "raw", "-F", "raw", uri, src)
		if r.code != 0 || !strings.Contains(r.stdout, "Images are identical") {
			t.Fatalf("qemu-img compare EXPORT SOURCE: want identical, got\n%s", r)
		}
		// One byte changed behind the server's back: the export serves
		// the file as it is, and compare must find the sector.
		const off = 40*miB + 12345
		flipByte(t, backing, off)
		defer flipByte(t, backing, off)
		r = runTool(t, time.Minute, qemuImg, "compare", "-f", "raw", "-F", "raw", uri, src)
		// qemu-img names the byte, or (7.2) the 512-byte sector.
		exact := fmt.Sprintf("Content mismatch at offset %d!", off)
		sector := fmt.Sprintf("Content mismatch at offset %d!", off&^511)
		if r.code != 1 || !strings.Contains(r.stdout, exact) && !strings.Contains(r.stdout, sector) {
			t.Errorf("qemu-img compare after flipping byte %d of the export's file: want exit 1 and %q, got\n%s", off, sector, r)
		}
	})

	t.Run("convert from the export", func(t *testing.T) {
		out := filepath.Join(dir, "download.img")
		defer os.Remove(out)
		if r := runTool(t, time.Minute, qemuImg, "convert", "-f", "raw", "-O", "raw", uri, out); r.code != 0 {
			t.Fatalf("qemu-img convert %s FILE:\n%s", uri, r)
		}
		if got := fileSHA256(t, out); got != want {
			t.Errorf("qemu-img convert %s FILE: download SHA-256 %x, source %x", uri, got, want)
		}
	})

	t.Run("qemu-io patterns", func(t *testing.T) {
		r := runTool(t, 30*time.Second, qemuIO, "-f", "raw", uri,
			"-c", "write -P 0xab 1M 64k", "-c", "read -P 0xab 1M 64k")
		if r.code != 0 || !strings.Contains(r.stdout, "read 65536/65536 bytes at offset 1048576") || strings.Contains(r.stdout, "failed") {
			t.Fatalf("qemu-io write and read back pattern 0xab:\n%s", r)
		}
		got := make([]byte, 64*kiB)
		f, err := os.Open(backing)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.ReadAt(got, 1*miB)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, bytes.Repeat([]byte{0xab}, 64*kiB)) {
			t.Errorf("after qemu-io write -P 0xab 1M 64k the export's file does not hold 0xab there")
		}
		// 0xcd was never written: the read must fail verification.
		r = runTool(t, 30*time.Second, qemuIO, "-f", "raw", uri, "-c", "read -P 0xcd 1M 64k")
		if r.code == 0 || !strings.Contains(r.stdout, "Pattern verification failed at offset 1048576") {
			t.Errorf("qemu-io read -P 0xcd of bytes written as 0xab: want a pattern failure and a non-zero exit, got\n%s", r)
		}
	})

	t.Run("read-only export", func(t *testing.T) {
		before := fileSHA256(t, roBacking)
		// Opened read-write, qemu refuses the read-only export...
		r := runTool(t, 30*time.Second, qemuIO, "-f", "raw", s.uri("ro"), "-c", "write -P 0xab 0 4k")
		if r.code == 0 || strings.Contains(r.stdout, "wrote") {
			t.Errorf("qemu-io write to a read-only export succeeded:\n%s", r)
		}
		// ...and opened read-only, it refuses the write.
		r = runTool(t, 30*time.Second, qemuIO, "-r", "-f", "raw", s.uri("ro"), "-c", "write -P 0xab 0 4k")
		if r.code == 0 || strings.Contains(r.stdout, "wrote") {
			t.Errorf("qemu-io -r write to a read-only export succeeded:\n%s", r)
		}
		r = runTool(t, 30*time.Second, qemuIO, "-r", "-f", "raw", s.uri("ro"), "-c", "read -P 0x5a 0 64k")
		if r.code != 0 || strings.Contains(r.stdout, "failed") {
			t.Errorf("qemu-io -r read -P 0x5a of the read-only export:\n%s", r)
		}
		if fileSHA256(t, roBacking) != before {
			t.Errorf("the read-only export's file changed")
		}
	})
}

// flipByte inverts one byte of a file.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

// fioJob is the part of fio's JSON output the tests read.
type fioJob struct {
	Error int `json:"error"`
	Read  struct {
		IOBytes  int64 `json:"io_bytes"`
		TotalIOs int64 `json:"total_ios"`
	} `json:"read"`
	Write struct {
		IOBytes  int64 `json:"io_bytes"`
		TotalIOs int64 `json:"total_ios"`
	} `json:"write"`
}

// runFio runs fio and decodes the JSON that follows the nbd engine's
// "connected" line.
func runFio(t *testing.T, fio string, args ...string) (fioJob, toolResult) {
	t.Helper()
	r := runTool(t, 90*time.Second, fio, append(args, "--output-format=json")...)
	var out struct {
		Jobs []fioJob `json:"jobs"`
	}
	i := strings.Index(r.stdout, "\n{")
	if strings.HasPrefix(r.stdout, "{") {
		i = 0
	}
	if i < 0 || json.Unmarshal([]byte(r.stdout[i:]), &out) != nil || len(out.Jobs) != 1 {
		return fioJob{Error: -1}, r
	}
	return out.Jobs[0], r
}

// TestInteropFio: fio's nbd engine writes 4 KiB blocks at random with 32
// requests in flight, reads every one back and checks its CRC; reads at
// random; and, after one byte of the file is changed, a verify pass
// through the server finds exactly that block. The verify passes read 4
// KiB at depth 32, where the server gathers reads in batches (nbd's
// gatherState); the writes may be too, once a probe has found the depth,
// as the first half of a connection's first trial gathers (gatherTrial).
func TestInteropFio(t *testing.T) {
	fio := requireFioNBD(t)
	const size = 32 * miB
	dir := imageDir(t, 2*size)
	backing := filepath.Join(dir, "fio.img")
	makeZeroImage(t, backing, size)
	s := startServer(t, exportSpec{Name: "disk", Path: backing})
	write := []string{"--name=verify", "--ioengine=nbd", "--uri=" + s.uri("disk"),
		"--rw=randwrite", "--bs=4k", "--iodepth=32", fmt.Sprintf("--size=%d", size),
		"--verify=crc32c", "--verify_fatal=1", "--time_based=0",
		// No local-*-verify.state file in the package directory.
		"--verify_state_save=0"}

	j, r := runFio(t, fio, append(write, "--do_verify=1")...)
	if r.code != 0 || j.Error != 0 {
		t.Fatalf("fio randwrite with verify: error %d\n%s", j.Error, r)
	}
	if j.Write.IOBytes != size || j.Read.IOBytes != size {
		t.Errorf("fio randwrite with verify: wrote %d and verified %d bytes, want %d each", j.Write.IOBytes, j.Read.IOBytes, size)
	}

	j, r = runFio(t, fio, "--name=randread", "--ioengine=nbd", "--uri="+s.uri("disk"),
		"--rw=randread", "--bs=64k", "--iodepth=8", fmt.Sprintf("--size=%d", size), "--time_based=0")
	if r.code != 0 || j.Error != 0 || j.Read.IOBytes != size {
		t.Errorf("fio randread: error %d, read %d bytes (want %d)\n%s", j.Error, j.Read.IOBytes, size, r)
	}

	const bad = 1000*4096 + 100
	flipByte(t, backing, bad)
	r = runTool(t, 90*time.Second, fio, append(write, "--verify_only")...)
	// "crc32c: verify failed at file verify.0.0 offset 4096000, length 4096"
	out := r.stdout + r.stderr
	wantAt := fmt.Sprintf(" offset %d, length 4096", bad&^4095)
	if r.code == 0 || !strings.Contains(out, "verify failed") || !strings.Contains(out, wantAt) {
		t.Errorf("fio --verify_only after flipping byte %d: want a non-zero exit and \"verify failed ...%s\", got\n%s", bad, wantAt, r)
	}

	// At depth 1 the server's reader sleeps in read(2) on a blocking
	// socket once the client has kept to one request at a time (nbd's
	// sockReader); the data must come back the same that way.
	const depth1 = 4 * miB
	j, r = runFio(t, fio, "--name=verify1", "--ioengine=nbd", "--uri="+s.uri("disk"),
		"--rw=randwrite", "--bs=4k", "--iodepth=1", fmt.Sprintf("--size=%d", depth1),
		"--verify=crc32c", "--verify_fatal=1", "--time_based=0", "--verify_state_save=0", "--do_verify=1")
	if r.code != 0 || j.Error != 0 || j.Write.IOBytes != depth1 || j.Read.IOBytes != depth1 {
		t.Fatalf("fio randwrite with verify at depth 1: error %d, wrote %d and verified %d bytes, want %d each\n%s",
			j.Error, j.Write.IOBytes, j.Read.IOBytes, depth1, r)
	}
}

// libnbdRequest is one request of interop_requests.py.
type libnbdRequest struct {
	Name   string `json:"name"`
	Cmd    string `json:"cmd"`
	Offset uint64 `json:"offset"`
	Length uint32 `json:"length"`
	Flags  uint32 `json:"flags"`
}

// requestResult is what the script saw.
type requestResult struct {
	Errno   string `json:"errno"`
	Message string `json:"message"`
	Usable  bool   `json:"usable"`
	After   string `json:"after"`
}

// libnbdAdvertised is what libnbd negotiated, as the script reports it.
type libnbdAdvertised struct {
	Size           uint64    `json:"size"`
	ExportName     string    `json:"export_name"`
	Description    *string   `json:"description"`
	Structured     bool      `json:"structured_replies"`
	BaseAllocation bool      `json:"base_allocation"`
	BlockSize      [3]uint32 `json:"block_size"`
	IsReadOnly     bool      `json:"is_read_only"`
	CanFlush       bool      `json:"can_flush"`
	CanFUA         bool      `json:"can_fua"`
	CanTrim        bool      `json:"can_trim"`
	CanZero        bool      `json:"can_zero"`
	CanFastZero    bool      `json:"can_fast_zero"`
	CanDF          bool      `json:"can_df"`
	CanMultiConn   bool      `json:"can_multi_conn"`
	CanCache       bool      `json:"can_cache"`
}

type requestsJob struct {
	URI        string          `json:"uri,omitempty"`
	Argv       []string        `json:"argv,omitempty"`
	Structured bool            `json:"structured"`
	Ops        []libnbdRequest `json:"ops"`
}

type requestsOutput struct {
	Advertised libnbdAdvertised `json:"advertised"`
	Results    []requestResult  `json:"results"`
}

// Command flags, as libnbd and the protocol number them.
const (
	cmdFlagFUA      = 1 << 0 // NBD_CMD_FLAG_FUA
	cmdFlagNoHole   = 1 << 1 // NBD_CMD_FLAG_NO_HOLE
	cmdFlagDF       = 1 << 2 // NBD_CMD_FLAG_DF
	cmdFlagReqOne   = 1 << 3 // NBD_CMD_FLAG_REQ_ONE
	cmdFlagFastZero = 1 << 4 // NBD_CMD_FLAG_FAST_ZERO
)

// TestInteropNbdshErrors: libnbd, with its own checks off, sends every
// kind of bad request of the protocol's error table to a writable and a
// read-only export, with structured replies and without. Each must get
// the error the spec names, from the server, and leave the connection
// usable; the good requests next to them must succeed; and the handshake
// must advertise what the export can do.
func TestInteropNbdshErrors(t *testing.T) {
	requireLibnbdPython(t)
	const size = 1 * miB
	dir := t.TempDir()
	rw, ro := filepath.Join(dir, "rw.img"), filepath.Join(dir, "ro.img")
	makeSparse(t, rw, size, [2]int64{0, 64 * kiB})
	makeSparse(t, ro, size, [2]int64{0, 64 * kiB})
	s := startServer(t,
		exportSpec{Name: "disk", Path: rw, Description: "writable"},
		exportSpec{Name: "ro", Path: ro, Description: "read-only", ReadOnly: true},
	)
	const end = uint64(size)
	const wrap = ^uint64(0) - 255 // offset+length wraps past 2^64

	// want is the errno with structured replies, then without ("" is
	// success). The spec: ENOSPC for a write past the end, EINVAL for a
	// read, trim or block status past the end, EPERM for a write or trim
	// on a read-only export, EINVAL for an unknown flag or one that is
	// not for that command. DF is only valid with structured replies;
	// BLOCK_STATUS needs a meta context, which needs them too.
	type tc struct {
		req  libnbdRequest
		want [2]string
	}
	writable := []tc{
		{libnbdRequest{"WRITE past the end", "pwrite", end - 256, 512, 0}, [2]string{"ENOSPC", "ENOSPC"}},
		{libnbdRequest{"WRITE at the end", "pwrite", end, 512, 0}, [2]string{"ENOSPC", "ENOSPC"}},
		{libnbdRequest{"WRITE whose end wraps 64 bits", "pwrite", wrap, 512, 0}, [2]string{"ENOSPC", "ENOSPC"}},
		{libnbdRequest{"WRITE_ZEROES past the end", "zero", end - 256, 512, 0}, [2]string{"ENOSPC", "ENOSPC"}},
		{libnbdRequest{"READ past the end", "pread", end - 256, 512, 0}, [2]string{"EINVAL", "EINVAL"}},
		{libnbdRequest{"READ whose end wraps 64 bits", "pread", wrap, 512, 0}, [2]string{"EINVAL", "EINVAL"}},
		{libnbdRequest{"TRIM past the end", "trim", end - 256, 512, 0}, [2]string{"EINVAL", "EINVAL"}},
		{libnbdRequest{"BLOCK_STATUS past the end", "block_status", end - 256, 512, 0}, [2]string{"EINVAL", "EINVAL"}},
		{libnbdRequest{"CACHE past the end", "cache", end - 256, 512, 0}, [2]string{"EINVAL", "EINVAL"}},
		{libnbdRequest{"READ with unknown flag 1<<9", "pread", 0, 512, 1 << 9}, [2]string{"EINVAL", "EINVAL"}},
		{libnbdRequest{"WRITE with unknown flag 1<<15", "pwrite", 0, 512, 1 << 15}, [2]string{"EINVAL", "EINVAL"}},
		{libnbdRequest{"READ with REQ_ONE", "pread", 0, 512, cmdFlagReqOne}, [2]string{"EINVAL", "EINVAL"}},
		{libnbdRequest{"WRITE with NO_HOLE", "pwrite", 0, 512, cmdFlagNoHole}, [2]string{"EINVAL", "EINVAL"}},
		{libnbdRequest{"WRITE with DF", "pwrite", 0, 512, cmdFlagDF}, [2]string{"EINVAL", "EINVAL"}},
		{libnbdRequest{"TRIM with FAST_ZERO", "trim", 0, 512, cmdFlagFastZero}, [2]string{"EINVAL", "EINVAL"}},
		{libnbdRequest{"READ with DF", "pread", 0, 512, cmdFlagDF}, [2]string{"", "EINVAL"}},
		{libnbdRequest{"WRITE with FUA", "pwrite", 4096, 4096, cmdFlagFUA}, [2]string{"", ""}},
		{libnbdRequest{"WRITE_ZEROES with NO_HOLE", "zero", 8192, 4096, cmdFlagNoHole}, [2]string{"", ""}},
		{libnbdRequest{"WRITE_ZEROES with FAST_ZERO", "zero", 128 * kiB, 64 * kiB, cmdFlagFastZero}, [2]string{"", ""}},
		{libnbdRequest{"TRIM", "trim", 256 * kiB, 64 * kiB, 0}, [2]string{"", ""}},
		{libnbdRequest{"FLUSH", "flush", 0, 0, 0}, [2]string{"", ""}},
		{libnbdRequest{"CACHE", "cache", 0, 64 * kiB, 0}, [2]string{"", ""}},
		{libnbdRequest{"BLOCK_STATUS", "block_status", 0, 64 * kiB, 0}, [2]string{"", "EINVAL"}},
		{libnbdRequest{"READ of the last byte", "pread", end - 1, 1, 0}, [2]string{"", ""}},
		{libnbdRequest{"READ of zero bytes", "pread", 0, 0, 0}, [2]string{"", ""}},
	}
	readOnly := []tc{
		{libnbdRequest{"WRITE", "pwrite", 0, 512, 0}, [2]string{"EPERM", "EPERM"}},
		{libnbdRequest{"WRITE with FUA", "pwrite", 0, 512, cmdFlagFUA}, [2]string{"EPERM", "EPERM"}},
		{libnbdRequest{"WRITE_ZEROES", "zero", 0, 512, 0}, [2]string{"EPERM", "EPERM"}},
		{libnbdRequest{"TRIM", "trim", 0, 512, 0}, [2]string{"EPERM", "EPERM"}},
		{libnbdRequest{"READ", "pread", 0, 4096, 0}, [2]string{"", ""}},
		{libnbdRequest{"FLUSH", "flush", 0, 0, 0}, [2]string{"", ""}},
		{libnbdRequest{"CACHE", "cache", 0, 4096, 0}, [2]string{"", ""}},
	}

	for _, structured := range []bool{true, false} {
		for _, ex := range []struct {
			name     string
			readOnly bool
			cases    []tc
		}{{"disk", false, writable}, {"ro", true, readOnly}} {
			t.Run(fmt.Sprintf("%s/structured=%v", ex.name, structured), func(t *testing.T) {
				job := requestsJob{URI: s.uri(ex.name), Structured: structured}
				for _, c := range ex.cases {
					job.Ops = append(job.Ops, c.req)
				}
				var out requestsOutput
				runPython(t, "interop_requests.py", job, &out)
				checkLibnbdAdvertised(t, out.Advertised, ex.name, size, ex.readOnly, structured)
				if len(out.Results) != len(ex.cases) {
					t.Fatalf("script ran %d requests, want %d", len(out.Results), len(ex.cases))
				}
				si := 0
				if !structured {
					si = 1
				}
				for i, c := range ex.cases {
					got, want := out.Results[i], c.want[si]
					if got.Errno != want {
						t.Errorf("%s [%d, +%d) flags %#x: errno %q (%s), want %q", c.req.Name, c.req.Offset, c.req.Length, c.req.Flags, got.Errno, got.Message, orSuccess(want))
					} else if want != "" && !strings.Contains(got.Message, "command failed") {
						t.Errorf("%s: the %s came from libnbd, not the server: %s", c.req.Name, want, got.Message)
					}
					if !got.Usable {
						t.Errorf("%s: connection unusable afterwards: a 512-byte READ at 0 failed: %s", c.req.Name, got.After)
					}
				}
			})
		}
	}
}

// orSuccess names an expected errno, "" being success.
func orSuccess(errno string) string {
	if errno == "" {
		return "success"
	}
	return errno
}

// checkLibnbdAdvertised checks what libnbd negotiated with an image-file
// export of boardnbd.
func checkLibnbdAdvertised(t *testing.T, a libnbdAdvertised, name string, size uint64, readOnly, structured bool) {
	t.Helper()
	if a.Size != size || a.ExportName != name {
		t.Errorf("export %q of size %d, want %q of size %d", a.ExportName, a.Size, name, size)
	}
	for _, f := range []struct {
		name      string
		got, want bool
	}{
		{"get_structured_replies_negotiated", a.Structured, structured},
		{"can_meta_context(base:allocation)", a.BaseAllocation, structured},
		{"is_read_only", a.IsReadOnly, readOnly},
		{"can_flush", a.CanFlush, true},
		{"can_fua", a.CanFUA, true},
		{"can_cache", a.CanCache, true},
		{"can_multi_conn", a.CanMultiConn, true},
		{"can_trim", a.CanTrim, !readOnly},
		{"can_zero", a.CanZero, !readOnly},
		{"can_fast_zero", a.CanFastZero, !readOnly},
		// NBD_FLAG_SEND_DF only means something with structured replies.
		{"can_df", a.CanDF, structured},
	} {
		if f.got != f.want {
			t.Errorf("%s = %v, want %v", f.name, f.got, f.want)
		}
	}
	if want := [3]uint32{1, 4096, 32 * miB}; a.BlockSize != want {
		t.Errorf("get_block_size (min, preferred, max) = %v, want %v", a.BlockSize, want)
	}
}

// shutdownEvent is one outcome of interop_shutdown.py, with its count.
type shutdownEvent struct {
	Outcome    string `json:"outcome"`
	FromServer bool   `json:"from_server"`
	Message    string `json:"message"`
	Dead       bool   `json:"dead"`
	Count      int    `json:"count"`
}

// TestInteropShutdownESHUTDOWN: a client keeps reading while the server
// gets SIGTERM. Its requests after the drain began must be answered
// ESHUTDOWN (the server's grace for telling clients why), or find the
// connection closed; the server must then close it, and exit 0.
func TestInteropShutdownESHUTDOWN(t *testing.T) {
	py := requireLibnbdPython(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	makeSparse(t, img, 1*miB, [2]int64{0, 4 * kiB})
	s := startServer(t, exportSpec{Name: "disk", Path: img})

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, "-I", filepath.Join("testdata", "interop_shutdown.py"), s.uri("disk"))
	cmd.WaitDelay = 5 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	br := bufio.NewReader(stdout)
	if line := readLineWithin(t, br, 30*time.Second); line != "ready" {
		t.Fatalf("script said %q, want ready; stderr:\n%s", line, &stderr)
	}

	start := time.Now()
	s.terminate(t)
	if !s.log.waitFor("shutting down", 10*time.Second) {
		t.Fatalf("no \"shutting down\" log line within 10s of SIGTERM; log:\n%s", s.log)
	}
	io.WriteString(stdin, "go\n")
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("interop_shutdown.py: %v\nstderr:\n%s", err, &stderr)
	}
	var out struct {
		Events []shutdownEvent `json:"events"`
	}
	if err := json.Unmarshal(rest, &out); err != nil || len(out.Events) == 0 {
		t.Fatalf("interop_shutdown.py printed %q: %v", rest, err)
	}
	var story []string
	for _, e := range out.Events {
		desc := e.Outcome
		switch {
		case e.Dead:
			desc += " (connection closed: " + e.Message + ")"
		case e.FromServer:
			desc += " (from the server)"
		}
		story = append(story, fmt.Sprintf("%d× %s", e.Count, desc))
	}
	t.Logf("reads after SIGTERM: %s", strings.Join(story, ", then "))

	ev := out.Events
	// The signal and the drain are a few microseconds apart; a read that
	// slipped in between may succeed, more may not.
	if ev[0].Outcome == "ok" {
		if ev[0].Count > 2 {
			t.Errorf("%d reads succeeded after the server logged that it was shutting down", ev[0].Count)
		}
		ev = ev[1:]
	}
	switch {
	case len(ev) == 0:
		t.Fatalf("every read succeeded for 5s after SIGTERM; want ESHUTDOWN or a closed connection")
	case ev[0].Outcome == "ESHUTDOWN" && ev[0].FromServer:
	case ev[0].Dead:
	default:
		t.Errorf("first failed read after SIGTERM: %s (%s), want ESHUTDOWN from the server or the connection closed", ev[0].Outcome, ev[0].Message)
	}
	if last := out.Events[len(out.Events)-1]; !last.Dead {
		t.Errorf("the server did not close the connection within 5s of SIGTERM")
	}
	if code := s.wait(t, 45*time.Second); code != 0 {
		t.Errorf("boardnbd exited %d after SIGTERM, want 0", code)
	}
	t.Logf("SIGTERM to exit: %v", time.Since(start).Round(time.Millisecond))
}

// TestInteropRawNewstyle: a plain newstyle client (client flags 0, no
// fixed newstyle, no options but NBD_OPT_EXPORT_NAME), byte by byte: the
// reply is size, flags and exactly 124 zeroes; reads get simple replies;
// an unknown command is EINVAL and the connection lives on; an unknown
// export name gets the connection closed, as the spec requires.
func TestInteropRawNewstyle(t *testing.T) {
	const size = 1 * miB
	img := filepath.Join(t.TempDir(), "disk.img")
	writeRandomImage(t, img, size, 11)
	content, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, exportSpec{Name: "disk", Path: img})
	dial := func(t *testing.T) *rawClient {
		nc, err := net.DialTimeout("tcp", s.addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		c := newRawClient(t, nc, nc)
		if f := c.greeting(); f&specFlagFixedNewstyle == 0 {
			t.Errorf("handshake flags = %#x, want NBD_FLAG_FIXED_NEWSTYLE set", f)
		}
		return c
	}

	for _, tc := range []struct {
		name     string
		flags    uint32
		noZeroes bool
		export   string
	}{
		{"client flags 0", 0, false, "disk"},
		{"NBD_FLAG_C_NO_ZEROES", specFlagCNoZeroes, true, "disk"},
		{"empty name is the only export", 0, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t)
			c.clientFlags(tc.flags)
			gotSize, tflags := c.exportName(tc.export, tc.noZeroes)
			if gotSize != size {
				t.Errorf("export size = %d, want %d", gotSize, size)
			}
			if tflags&specTFlagHasFlags == 0 || tflags&specTFlagReadOnly != 0 {
				t.Errorf("transmission flags = %#x, want HAS_FLAGS and not READ_ONLY", tflags)
			}
			// A READ right after: had the server sent more or fewer than
			// 124 zeroes, this reply would be misaligned.
			c.request(0, specCmdRead, 0x1122334455667788, 8192, 4096, nil)
			if e := c.simpleReply(0x1122334455667788); e != 0 {
				t.Fatalf("READ [8192, +4096): error %d", e)
			}
			if got := c.read(4096, "READ data"); !bytes.Equal(got, content[8192:8192+4096]) {
				t.Errorf("READ [8192, +4096) returned other bytes than the file holds")
			}
			c.request(0, 99, 2, 0, 0, nil)
			if e := c.simpleReply(2); e != specEINVAL {
				t.Errorf("unknown command 99: error %d, want EINVAL (%d)", e, specEINVAL)
			}
			payload := bytes.Repeat([]byte{0xc3}, 512)
			c.request(0, specCmdWrite, 3, 4096, 512, payload)
			if e := c.simpleReply(3); e != 0 {
				t.Fatalf("WRITE [4096, +512) after the error: error %d", e)
			}
			c.request(0, specCmdRead, 4, 4096, 512, nil)
			if e := c.simpleReply(4); e != 0 {
				t.Fatalf("READ [4096, +512): error %d", e)
			}
			if got := c.read(512, "READ data"); !bytes.Equal(got, payload) {
				t.Errorf("READ [4096, +512) after WRITE returned other bytes")
			}
			c.request(0, specCmdDisc, 5, 0, 0, nil)
			c.expectClosed("after NBD_CMD_DISC")
		})
	}

	t.Run("unknown export", func(t *testing.T) {
		c := dial(t)
		c.clientFlags(0)
		c.option(specOptExportName, []byte("no-such-export"))
		c.expectClosed("NBD_OPT_EXPORT_NAME of an unknown export")
	})
}

// TestInteropInetd: "serve --inetd" serves one client on its standard
// input and output: a socket pair (libnbd's connect_command), an accepted
// TCP connection (what inetd passes), or two pipes; and nbdinfo's
// command form, which hands the server a listening socket the systemd way.
func TestInteropInetd(t *testing.T) {
	bin := boardnbdBinary(t)
	const size = 1 * miB
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	writeRandomImage(t, img, size, 13)
	content, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, "", exportSpec{Name: "disk", Path: img, Description: "served by inetd"})

	t.Run("libnbd connect_command", func(t *testing.T) {
		job := requestsJob{
			Argv:       []string{bin, "serve", "--inetd", "-c", cfg},
			Structured: true,
			Ops:        []libnbdRequest{{"WRITE", "pwrite", 64 * kiB, 4096, cmdFlagFUA}, {"READ", "pread", 0, 4096, 0}},
		}
		var out requestsOutput
		runPython(t, "interop_requests.py", job, &out)
		a := out.Advertised
		if a.ExportName != "disk" || a.Size != size || a.Description == nil || *a.Description != "served by inetd" {
			t.Errorf("over stdin/stdout: export %q size %d description %v, want \"disk\", %d, \"served by inetd\"", a.ExportName, a.Size, a.Description, size)
		}
		for i, r := range out.Results {
			if r.Errno != "" {
				t.Errorf("%s: %s", job.Ops[i].Name, r.Message)
			}
		}
		got, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[64*kiB:68*kiB], bytes.Repeat([]byte{0xa5}, 4096)) {
			t.Errorf("the WRITE through the inetd server did not reach the file")
		}
		copy(content[64*kiB:], got[64*kiB:68*kiB])
	})

	t.Run("inetd over TCP", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		children := make(chan error, 8)
		logs := make(chan *lineLog, 8)
		// What inetd does: accept, and start the server with the
		// connection as its standard input and output.
		go func() {
			for range cap(children) {
				nc, err := ln.Accept()
				if err != nil {
					return
				}
				f, err := nc.(*net.TCPConn).File()
				nc.Close()
				if err != nil {
					children <- err
					continue
				}
				log := newLineLog()
				cmd := exec.Command(bin, "serve", "--inetd", "-c", cfg)
				cmd.Stdin, cmd.Stdout, cmd.Stderr = f, f, log
				err = cmd.Start()
				f.Close()
				if err != nil {
					children <- err
					continue
				}
				logs <- log
				go func() { children <- cmd.Wait() }()
			}
		}()
		var out nbdinfoOutput
		nbdinfoJSON(t, &out, "--json", "nbd://"+ln.Addr().String()+"/disk")
		ln.Close()
		if len(out.Exports) != 1 || out.Exports[0].Name != "disk" || out.Exports[0].Description != "served by inetd" || out.Exports[0].Size != size {
			t.Errorf("nbdinfo through inetd: %+v, want export disk, \"served by inetd\", size %d", out.Exports, size)
		}
		for n := len(logs); n > 0; n-- {
			log := <-logs
			select {
			case err := <-children:
				if err != nil {
					t.Errorf("inetd child: %v; log:\n%s", err, log)
				}
			case <-time.After(15 * time.Second):
				t.Errorf("inetd child still running 15s after its client left; log:\n%s", log)
			}
		}
	})

	t.Run("pipes", func(t *testing.T) {
		inR, inW, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		outR, outW, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer outR.Close()
		log := newLineLog()
		cmd := exec.Command(bin, "serve", "--inetd", "-c", cfg)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		inR.Close()
		outW.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		defer func() {
			inW.Close()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("boardnbd --inetd over pipes: %v", err)
				}
			case <-time.After(15 * time.Second):
				cmd.Process.Kill()
				t.Errorf("boardnbd --inetd over pipes still running 15s after NBD_CMD_DISC")
			}
			if t.Failed() {
				t.Logf("boardnbd --inetd log:\n%s", log)
			}
		}()
		c := newRawClient(t, outR, inW)
		c.greeting()
		c.clientFlags(uint32(specFlagFixedNewstyle) | specFlagCNoZeroes)
		if gotSize, _ := c.exportName("disk", true); gotSize != size {
			t.Errorf("export size over pipes = %d, want %d", gotSize, size)
		}
		// A client that thinks before its first request: the server's
		// read must wait for it, not find an empty pipe and give up.
		time.Sleep(100 * time.Millisecond)
		c.request(0, specCmdRead, 1, 0, 4096, nil)
		if e := c.simpleReply(1); e != 0 {
			t.Fatalf("READ over pipes: error %d", e)
		}
		if got := c.read(4096, "READ data"); !bytes.Equal(got, content[:4096]) {
			t.Errorf("READ [0, +4096) over pipes returned other bytes than the file holds")
		}
		c.request(0, specCmdDisc, 2, 0, 0, nil)
	})

	// nbdinfo [ CMD ] runs CMD with a listening socket passed the systemd
	// way (LISTEN_FDS), not on standard input.
	for _, tc := range []struct {
		name string
		argv []string
	}{
		// The README's example.
		{"nbdinfo [ serve -c ] (socket activation)", []string{bin, "serve", "-c", cfg}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--json", "--", "["}, tc.argv...)
			var out nbdinfoOutput
			nbdinfoJSON(t, &out, append(args, "]")...)
			if len(out.Exports) != 1 || out.Exports[0].Name != "disk" || out.Exports[0].Size != size {
				t.Errorf("nbdinfo [ %s ]: %+v, want export disk of size %d", strings.Join(tc.argv, " "), out.Exports, size)
			}
		})
	}
}
