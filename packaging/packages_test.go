package packaging

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// What every package installs, whatever its format.
var packagedFiles = []string{
	"/usr/bin/boardnbd",
	"/usr/lib/systemd/system/boardnbd.service",
	"/usr/lib/systemd/system/boardnbd.socket",
	"/usr/lib/sysusers.d/boardnbd.conf",
	"/usr/share/man/man8/boardnbd.8.gz",
	"/usr/share/man/man5/boardnbd.yaml.5.gz",
	"/etc/boardnbd/config.yaml",
}

const conffile = "/etc/boardnbd/config.yaml"

// Each .deb says what it is (name, version, the Debian architecture of its
// target, maintainer, dependencies, description), holds the files, marks
// the config as a conffile, carries the maintainer scripts, and carries
// the very binary that make dist built.
func TestDebControlAndContents(t *testing.T) {
	dir, _ := built(t)
	need(t, "dpkg-deb")
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			deb := distFile(dir, tg, ".deb")
			f := controlFields(mustRun(t, "dpkg-deb", "--field", deb))
			want := map[string]string{
				"Package":      "boardnbd",
				"Version":      testPkgVersion + "-1",
				"Architecture": tg.debArch,
				"Section":      "net",
				"Priority":     "optional",
			}
			for k, v := range want {
				if f[k] != v {
					t.Errorf("%s: %s: %q, want %q", filepath.Base(deb), k, f[k], v)
				}
			}
			if !regexp.MustCompile(`^.+ <[^@ ]+@[^> ]+>$`).MatchString(f["Maintainer"]) {
				t.Errorf("%s: Maintainer %q, want \"Name <address>\"", filepath.Base(deb), f["Maintainer"])
			}
			if !strings.Contains(f["Depends"], "passwd") {
				t.Errorf("%s: Depends %q, want passwd (useradd, for the postinst)", filepath.Base(deb), f["Depends"])
			}
			synopsis, long, _ := strings.Cut(f["Description"], "\n")
			if synopsis == "" || len(synopsis) > 80 || !strings.Contains(long, "NBD") {
				t.Errorf("%s: Description %q, want a one-line synopsis and a long text about NBD", filepath.Base(deb), f["Description"])
			}

			listing := mustRun(t, "dpkg-deb", "--contents", deb)
			for _, p := range packagedFiles {
				if !strings.Contains(listing, " ."+p+"\n") {
					t.Errorf("%s does not contain %s:\n%s", filepath.Base(deb), p, listing)
				}
			}
			if strings.Contains(listing, "/etc/init.d/") {
				t.Errorf("%s contains an OpenRC script; that belongs in the .apk only", filepath.Base(deb))
			}
			if c := mustRun(t, "dpkg-deb", "--info", deb, "conffiles"); strings.TrimSpace(c) != conffile {
				t.Errorf("%s: conffiles = %q, want %q", filepath.Base(deb), c, conffile)
			}
			for _, script := range []string{"postinst", "prerm"} {
				if s := mustRun(t, "dpkg-deb", "--info", deb, script); !strings.HasPrefix(s, "#!/bin/sh") {
					t.Errorf("%s: %s does not start with #!/bin/sh:\n%s", filepath.Base(deb), script, s)
				}
			}

			root := t.TempDir()
			mustRun(t, "dpkg-deb", "--extract", deb, root)
			for _, p := range packagedFiles {
				if _, err := os.Stat(filepath.Join(root, p)); err != nil {
					t.Errorf("dpkg-deb -x %s: %v", filepath.Base(deb), err)
				}
			}
			if got, want := fileSum(t, filepath.Join(root, "usr/bin/boardnbd")), fileSum(t, distFile(dir, tg, "")); got != want {
				t.Errorf("%s: /usr/bin/boardnbd is not the binary make dist built", filepath.Base(deb))
			}
			if st, err := os.Stat(filepath.Join(root, "usr/bin/boardnbd")); err == nil && st.Mode().Perm() != 0o755 {
				t.Errorf("%s: /usr/bin/boardnbd mode %v, want 0755", filepath.Base(deb), st.Mode().Perm())
			}
		})
	}
}

// Installed by dpkg into a scratch root: the files land, the conffile is
// registered, the post-install creates the user (into that root, never
// this machine's), an edited config survives a reinstall and a remove,
// and only a purge deletes it.
func TestDebInstallIntoScratchRoot(t *testing.T) {
	dir, _ := built(t)
	need(t, "dpkg", "dpkg-query")
	tg, ok := hostTarget()
	if !ok {
		t.Skip("no release target for this machine's architecture; dpkg installs only its own")
	}
	deb := distFile(dir, tg, ".deb")
	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "var/lib/dpkg/status"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	hostPasswd, _ := os.ReadFile("/etc/passwd")
	hostGroup, _ := os.ReadFile("/etc/group")
	defer func() {
		// The scripts ran outside a chroot: make sure they kept to DPKG_ROOT.
		if p, _ := os.ReadFile("/etc/passwd"); !bytes.Equal(p, hostPasswd) {
			t.Errorf("installing into %s changed this machine's /etc/passwd", root)
		}
		if g, _ := os.ReadFile("/etc/group"); !bytes.Equal(g, hostGroup) {
			t.Errorf("installing into %s changed this machine's /etc/group", root)
		}
	}()

	dpkg := func(args ...string) string {
		t.Helper()
		// Scripts run without chroot, with DPKG_ROOT set; passwd is not
		// in the empty root, hence --force-depends.
		return mustRun(t, "dpkg", append([]string{"--root=" + root, "--force-script-chrootless",
			"--force-depends", "--force-not-root", "--force-confold"}, args...)...)
	}
	status := func() string {
		t.Helper()
		out, _, _ := run(t, time.Minute, "dpkg-query", "--admindir="+filepath.Join(root, "var/lib/dpkg"),
			"--show", "--showformat=${Status}|${Version}|${Conffiles}", "boardnbd")
		return out
	}

	dpkg("--install", deb)
	st := status()
	if !strings.HasPrefix(st, "install ok installed|"+testPkgVersion+"-1|") || !strings.Contains(st, conffile) {
		t.Errorf("after dpkg -i: status %q, want installed %s-1 with conffile %s", st, testPkgVersion, conffile)
	}
	for _, p := range packagedFiles {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("after dpkg -i: %v", err)
		}
	}
	if _, err := os.Stat("/usr/bin/systemd-sysusers"); err == nil {
		passwd, _ := os.ReadFile(filepath.Join(root, "etc/passwd"))
		if !regexp.MustCompile(`(?m)^boardnbd:x:\d+:\d+:[^:]*:/var/lib/boardnbd:[^:]*nologin$`).Match(passwd) {
			t.Errorf("postinst did not create the boardnbd user in the root:\n%s", passwd)
		}
		group, _ := os.ReadFile(filepath.Join(root, "etc/group"))
		if !regexp.MustCompile(`(?m)^disk:x:\d+:(.*,)?boardnbd(,.*)?$`).Match(group) {
			t.Errorf("postinst did not put boardnbd in the disk group:\n%s", group)
		}
	} else {
		t.Log("no systemd-sysusers here: the postinst cannot create users inside a root without chroot; not checked")
	}

	conf := filepath.Join(root, conffile)
	edited := append(readFile(t, conf), []byte("# edited by the admin\n")...)
	if err := os.WriteFile(conf, edited, 0o644); err != nil {
		t.Fatal(err)
	}
	dpkg("--install", deb)
	if got := readFile(t, conf); !bytes.Equal(got, edited) {
		t.Errorf("reinstalling replaced the edited %s", conffile)
	}

	dpkg("--remove", "boardnbd")
	if _, err := os.Stat(filepath.Join(root, "usr/bin/boardnbd")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after dpkg -r: /usr/bin/boardnbd: %v, want it gone", err)
	}
	if got := readFile(t, conf); !bytes.Equal(got, edited) {
		t.Errorf("dpkg -r removed or changed %s; a conffile stays until purge", conffile)
	}
	if st := status(); !strings.HasPrefix(st, "deinstall ok config-files|") {
		t.Errorf("after dpkg -r: status %q, want deinstall ok config-files", st)
	}
	dpkg("--purge", "boardnbd")
	if _, err := os.Stat(conf); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after dpkg --purge: %s: %v, want it gone", conffile, err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Each .rpm has the rpm architecture of its target, the files, the config
// marked %config(noreplace), its scriptlets and its dependency.
func TestRPM(t *testing.T) {
	dir, _ := built(t)
	need(t, "rpm")
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			pkg := distFile(dir, tg, ".rpm")
			q := func(format string) string {
				t.Helper()
				return mustRun(t, "rpm", "-qp", "--nosignature", "--nodigest", "--queryformat", format, pkg)
			}
			if got, want := q("%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{OS}"), "boardnbd "+testPkgVersion+" 1 "+tg.rpmArch+" linux"; got != want {
				t.Errorf("%s: %q, want %q", filepath.Base(pkg), got, want)
			}
			if s := q("%{SUMMARY}|%{PACKAGER}"); !strings.Contains(s, "Network block device") || !strings.Contains(s, "@") {
				t.Errorf("%s: summary|packager = %q", filepath.Base(pkg), s)
			}
			files := map[string]string{}
			for _, line := range strings.Split(strings.TrimSpace(q("[%{FILENAMES}\t%{FILEFLAGS:fflags}\n]")), "\n") {
				name, flags, _ := strings.Cut(line, "\t")
				files[name] = flags
			}
			for _, p := range packagedFiles {
				if _, ok := files[p]; !ok {
					t.Errorf("%s does not contain %s", filepath.Base(pkg), p)
				}
			}
			if f := files[conffile]; !strings.Contains(f, "c") || !strings.Contains(f, "n") {
				t.Errorf("%s: %s has flags %q, want config (c) and noreplace (n)", filepath.Base(pkg), conffile, f)
			}
			if !strings.Contains(q("%{POSTIN}"), "useradd") || !strings.Contains(q("%{PREUN}"), "systemctl") {
				t.Errorf("%s: %%post or %%preun missing", filepath.Base(pkg))
			}
			if reqs := q("[%{REQUIRENAME}\n]"); !strings.Contains(reqs, "shadow-utils") {
				t.Errorf("%s: requires %q, want shadow-utils (useradd)", filepath.Base(pkg), reqs)
			}
		})
	}
}

// apk-tools is not in Debian, so the .apk is read by hand: gzip members
// of tar streams, the first holding .PKGINFO and the scripts.
func TestAPK(t *testing.T) {
	dir, _ := built(t)
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			pkg := distFile(dir, tg, ".apk")
			files := readAPK(t, pkg)
			info := map[string][]string{}
			for _, line := range strings.Split(string(files[".PKGINFO"].data), "\n") {
				if k, v, ok := strings.Cut(line, " = "); ok {
					info[k] = append(info[k], v)
				}
			}
			want := map[string]string{"pkgname": "boardnbd", "pkgver": testPkgVersion + "-r1", "arch": tg.apkArch}
			for k, v := range want {
				if !slices.Equal(info[k], []string{v}) {
					t.Errorf("%s: .PKGINFO %s = %q, want %q", filepath.Base(pkg), k, info[k], v)
				}
			}
			if len(info["maintainer"]) != 1 || !strings.Contains(info["maintainer"][0], "@") {
				t.Errorf("%s: .PKGINFO maintainer = %q", filepath.Base(pkg), info["maintainer"])
			}
			for _, p := range append(slices.Clone(packagedFiles), "/etc/init.d/boardnbd", "/etc/conf.d/boardnbd") {
				if _, ok := files[strings.TrimPrefix(p, "/")]; !ok {
					t.Errorf("%s does not contain %s", filepath.Base(pkg), p)
				}
			}
			if f := files["etc/init.d/boardnbd"]; f.mode&0o111 == 0 {
				t.Errorf("%s: /etc/init.d/boardnbd mode %o, want executable", filepath.Base(pkg), f.mode)
			}
			for _, s := range []string{".post-install", ".post-upgrade", ".pre-deinstall"} {
				if !bytes.HasPrefix(files[s].data, []byte("#!/bin/sh")) {
					t.Errorf("%s: no %s script", filepath.Base(pkg), s)
				}
			}
		})
	}
}

type apkFile struct {
	mode int64
	data []byte // contents of files under 64 KiB
}

// readAPK reads every tar entry of every gzip member of an .apk.
func readAPK(t *testing.T, path string) map[string]apkFile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	br := bufio.NewReader(f)
	zr, err := gzip.NewReader(br)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]apkFile{}
	for members := 0; ; members++ {
		zr.Multistream(false)
		tr := tar.NewReader(zr)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: gzip member %d: %v", path, members, err)
			}
			var data []byte
			if h.Size < 64<<10 {
				data, _ = io.ReadAll(tr)
			}
			files[strings.TrimPrefix(h.Name, "./")] = apkFile{mode: h.Mode, data: data}
		}
		io.Copy(io.Discard, zr)
		if err := zr.Reset(br); err == io.EOF {
			if members < 1 {
				t.Fatalf("%s: %d gzip members, want control and data", path, members+1)
			}
			return files
		} else if err != nil {
			t.Fatal(err)
		}
	}
}
