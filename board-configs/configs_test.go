package boardconfigs

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"boardnbd/config"
)

// boards is every board the issue promised a file for, with the release
// target its build line must name.
var boards = []struct {
	file, target string
}{
	{"raspberry-pi-5.yaml", "arm64"},
	{"raspberry-pi-4.yaml", "arm64"},
	{"raspberry-pi-3.yaml", "arm64"},
	{"raspberry-pi-zero-2-w.yaml", "arm64"},
	{"raspberry-pi-zero.yaml", "armv6"},
	{"orange-pi-5.yaml", "arm64"},
	{"radxa-rock-5b.yaml", "arm64"},
	{"beaglebone-black.yaml", "armv7"},
	{"generic-x86-64.yaml", "amd64"},
}

// header is what the comment block at the top of a board file declares.
type header struct {
	board   string   // "# boardnbd config for: ..."
	build   string   // "# build: make GOARCH=..."
	pkg     string   // "# package: boardnbd-VERSION-linux-T.deb ..."
	boot    []string // "# boot: /dev/mmcblk0 ..."
	comment string   // the whole leading comment, for messages
}

func readHeader(t *testing.T, path string) header {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var h header
	var all strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "#") {
			break
		}
		all.WriteString(line + "\n")
		key, val, ok := strings.Cut(strings.TrimSpace(strings.TrimPrefix(line, "#")), ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		switch key {
		case "boardnbd config for":
			h.board = val
		case "build":
			h.build = val
		case "package":
			h.pkg, _, _ = strings.Cut(val, " ")
		case "boot":
			h.boot = strings.Fields(val)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	h.comment = all.String()
	return h
}

// targetOf turns "make GOARCH=arm GOARM=6" into the Makefile's target name
// "armv6", or "" if the line is not such a command.
func targetOf(build string) string {
	f := strings.Fields(build)
	if len(f) < 2 || f[0] != "make" {
		return ""
	}
	vars := map[string]string{}
	for _, a := range f[1:] {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			return ""
		}
		vars[k] = v
	}
	switch {
	case vars["GOARCH"] == "arm" && vars["GOARM"] != "":
		return "armv" + vars["GOARM"]
	case vars["GOARCH"] != "" && vars["GOARCH"] != "arm" && vars["GOARM"] == "":
		return vars["GOARCH"]
	}
	return ""
}

// distTargets reads DIST_TARGETS from the Makefile.
func distTargets(t *testing.T) []string {
	t.Helper()
	mk, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^DIST_TARGETS\s*:?=\s*(.+)$`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("Makefile has no DIST_TARGETS line")
	}
	return strings.Fields(string(m[1]))
}

// serviceWritable returns the directories boardnbd.service lets the
// service write (ReadWritePaths= and StateDirectory=), and those it hides
// or replaces (ProtectHome=, PrivateTmp=).
func serviceWritable(t *testing.T) (writable, hidden []string) {
	t.Helper()
	unit, err := os.ReadFile("../packaging/boardnbd.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(unit), "\n") {
		key, val, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || strings.HasPrefix(key, "#") {
			continue
		}
		switch key {
		case "ReadWritePaths":
			for _, p := range strings.Fields(val) {
				writable = append(writable, strings.TrimLeft(p, "-+"))
			}
		case "StateDirectory":
			for _, p := range strings.Fields(val) {
				writable = append(writable, "/var/lib/"+p)
			}
		case "ProtectHome":
			if val == "yes" || val == "true" || val == "tmpfs" || val == "read-only" {
				hidden = append(hidden, "/home", "/root", "/run/user")
			}
		case "PrivateTmp":
			if val == "yes" || val == "true" {
				hidden = append(hidden, "/tmp", "/var/tmp")
			}
		}
	}
	if len(writable) == 0 {
		t.Fatal("boardnbd.service: no ReadWritePaths= or StateDirectory=; the test expects the unit to be hardened")
	}
	return writable, hidden
}

// under reports whether path is dir or inside it.
func under(path, dir string) bool {
	path, dir = filepath.Clean(path), filepath.Clean(dir)
	return path == dir || strings.HasPrefix(path, dir+"/")
}

// socketPort reads the port of ListenStream= in boardnbd.socket.
func socketPort(t *testing.T) string {
	t.Helper()
	unit, err := os.ReadFile("../packaging/boardnbd.socket")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^ListenStream=(?:.*:)?(\d+)\s*$`).FindSubmatch(unit)
	if m == nil {
		t.Fatal("boardnbd.socket has no ListenStream= with a port")
	}
	return string(m[1])
}

// mmcPath matches SD cards and eMMC: /dev/mmcblk0, /dev/mmcblk1p2, and
// their by-id links.
var mmcPath = regexp.MustCompile(`^/dev/mmcblk\d+(p\d+)?$|^/dev/disk/by-(id|path)/.*mmc`)

// sdLetter matches kernel names whose letters or numbers change between
// boots.
var sdLetter = regexp.MustCompile(`^/dev/(sd[a-z]+|nvme\d+n\d+)(p?\d+)?$`)

// isBootDevice reports whether path is one of boot or a partition of one.
func isBootDevice(path string, boot []string) bool {
	for _, b := range boot {
		if path == b {
			return true
		}
		if rest, ok := strings.CutPrefix(path, b); ok && regexp.MustCompile(`^p?\d+$`).MatchString(rest) {
			return true
		}
	}
	return false
}

func TestBoardConfigs(t *testing.T) {
	targets := distTargets(t)
	writableDirs, hiddenDirs := serviceWritable(t)
	port := socketPort(t)

	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, b := range boards {
		want = append(want, b.file)
	}
	slices.Sort(want)
	if !slices.Equal(files, want) {
		t.Errorf("board files = %v, want %v (add new boards to the table in this test)", files, want)
	}

	boardNames := map[string]string{}
	for _, b := range boards {
		t.Run(strings.TrimSuffix(b.file, ".yaml"), func(t *testing.T) {
			cfg, err := config.Load(b.file)
			if err != nil {
				t.Fatalf("config.Load(%s):\n%v", b.file, err)
			}
			h := readHeader(t, b.file)
			if h.board == "" {
				t.Errorf("%s: no \"# boardnbd config for: BOARD\" line at the top", b.file)
			}

			// The build line names a target that `make dist` builds,
			// the right one for the board, and the package line agrees.
			tgt := targetOf(h.build)
			switch {
			case tgt == "":
				t.Errorf("%s: build line %q is not \"make GOARCH=... [GOARM=...]\"", b.file, h.build)
			case !slices.Contains(targets, tgt):
				t.Errorf("%s: build line %q is target %s; the Makefile's DIST_TARGETS are %v", b.file, h.build, tgt, targets)
			case tgt != b.target:
				t.Errorf("%s: build line %q is target %s, want %s for this board", b.file, h.build, tgt, b.target)
			}
			if wantPkg := "boardnbd-VERSION-linux-" + b.target + ".deb"; h.pkg != wantPkg {
				t.Errorf("%s: package line names %q, want %q", b.file, h.pkg, wantPkg)
			}
			if len(h.boot) == 0 {
				t.Errorf("%s: no \"# boot: DEVICE\" line naming the disk the board boots from", b.file)
			}
			for _, want := range []string{"boardnbd check -c", "lsblk"} {
				if !strings.Contains(h.comment, want) {
					t.Errorf("%s: header comment does not mention %q", b.file, want)
				}
			}

			// Advertised, with a board name no other file uses.
			if !cfg.Discovery.Enabled || cfg.Discovery.Board == "" {
				t.Errorf("%s: discovery enabled=%v board=%q, want enabled with a board name", b.file, cfg.Discovery.Enabled, cfg.Discovery.Board)
			}
			if other, dup := boardNames[cfg.Discovery.Board]; dup {
				t.Errorf("%s: discovery.board %q is also %s's", b.file, cfg.Discovery.Board, other)
			}
			boardNames[cfg.Discovery.Board] = b.file

			// Socket activation replaces listen: with the socket unit's
			// port, so a different port here would silently not apply.
			for _, addr := range cfg.Listen {
				if _, p, _ := strings.Cut(addr, "]:"); p != port && !strings.HasSuffix(addr, ":"+port) {
					t.Errorf("%s: listen %q is not port %s, which boardnbd.socket uses", b.file, addr, port)
				}
			}

			if len(cfg.Exports) == 0 {
				t.Errorf("%s: no exports; a board file should be ready to serve", b.file)
			}
			names := map[string]bool{}
			for _, e := range cfg.Exports {
				if names[e.Name] {
					t.Errorf("%s:%d: export name %q used twice", b.file, e.Line, e.Name)
				}
				names[e.Name] = true
				writable := !e.ReadOnly && e.CopyOnWrite == ""
				if writable && mmcPath.MatchString(e.Path) {
					t.Errorf("%s:%d: export %q serves %s writable; SD cards and eMMC are boot media: readonly: true or copy_on_write", b.file, e.Line, e.Name, e.Path)
				}
				if writable && isBootDevice(e.Path, h.boot) {
					t.Errorf("%s:%d: export %q serves the boot disk %s writable", b.file, e.Line, e.Name, e.Path)
				}
				if sdLetter.MatchString(e.Path) {
					t.Errorf("%s:%d: export %q uses %s, whose name changes between boots; use /dev/disk/by-id/", b.file, e.Line, e.Name, e.Path)
				}
				for _, p := range []string{e.Path, e.Overlay} {
					for _, d := range hiddenDirs {
						if p != "" && under(p, d) {
							t.Errorf("%s:%d: export %q uses %s, which boardnbd.service hides (%s)", b.file, e.Line, e.Name, p, d)
						}
					}
				}
				// Files the service writes must be where the unit lets it.
				var written []string
				if writable && !strings.HasPrefix(e.Path, "/dev/") {
					written = append(written, e.Path)
				}
				if e.CopyOnWrite == config.CopyOnWritePersistent {
					written = append(written, e.Overlay)
				}
				for _, p := range written {
					if !slices.ContainsFunc(writableDirs, func(d string) bool { return under(p, d) }) {
						t.Errorf("%s:%d: export %q writes %s, outside boardnbd.service's writable paths %v", b.file, e.Line, e.Name, p, writableDirs)
					}
				}
			}
		})
	}
}

// The package's default config must load, serve nothing, and listen where
// the socket unit does.
func TestPackagedDefaultConfig(t *testing.T) {
	cfg, err := config.Load("../packaging/config.yaml")
	if err != nil {
		t.Fatalf("config.Load(packaging/config.yaml):\n%v", err)
	}
	if len(cfg.Exports) != 0 {
		t.Errorf("packaging/config.yaml has %d exports, want none: a fresh install serves nothing", len(cfg.Exports))
	}
	port := socketPort(t)
	for _, addr := range cfg.Listen {
		if !strings.HasSuffix(addr, ":"+port) {
			t.Errorf("packaging/config.yaml: listen %q is not port %s of boardnbd.socket", addr, port)
		}
	}
}

func TestTargetOf(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"make GOARCH=arm64", "arm64"},
		{"make GOARCH=arm GOARM=6", "armv6"},
		{"make GOARCH=arm GOARM=7", "armv7"},
		{"make GOARCH=amd64", "amd64"},
		{"make GOARCH=arm", ""},
		{"make GOARCH=arm64 GOARM=7", ""},
		{"go build", ""},
		{"make dist", ""},
	} {
		if got := targetOf(tt.in); got != tt.want {
			t.Errorf("targetOf(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
