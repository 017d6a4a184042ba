package packaging

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Package versions start with a digit and sort after the tag they follow,
// whatever git describe says; Alpine gets a form apk accepts.
func TestPackageVersions(t *testing.T) {
	need(t, "make")
	for _, tc := range []struct{ version, pkg, apk string }{
		{"v1.2.3", "1.2.3", "1.2.3"},
		{"v1.2.3-5-gabc1234", "1.2.3+git5.abc1234", "1.2.3_git5"},
		{"v1.2.3-5-gabc1234-dirty", "1.2.3+git5.abc1234.dirty", "1.2.3_git5"},
		{"abc1234", "0.0.0+git0.abc1234", "0.0.0_git0"},
		{"abc1234-dirty", "0.0.0+git0.abc1234.dirty", "0.0.0_git0"},
		{"2.0", "2.0", "2.0"},
	} {
		out, err := runMake(t, "-s", "pkg-version", "VERSION="+tc.version)
		if err != nil {
			t.Fatalf("make pkg-version VERSION=%s: %v\n%s", tc.version, err, out)
		}
		if got, want := strings.TrimSpace(out), tc.pkg+" "+tc.apk; got != want {
			t.Errorf("make pkg-version VERSION=%s = %q, want %q", tc.version, got, want)
		}
	}
}

// make install honours DESTDIR and PREFIX, points the units or the OpenRC
// script at the binary it installed, and installs the config only once.
func TestMakeInstall(t *testing.T) {
	need(t, "make", "go", "install", "sed")
	bin := filepath.Join(t.TempDir(), "boardnbd")
	for _, tc := range []struct {
		prefix, init string
		files        []string // must exist under DESTDIR
		absent       []string // must not
		runsFrom     string   // the file that names the binary
	}{
		{"/usr", "systemd", []string{
			"/usr/bin/boardnbd", "/usr/share/man/man8/boardnbd.8", "/usr/share/man/man5/boardnbd.yaml.5",
			"/usr/lib/systemd/system/boardnbd.service", "/usr/lib/systemd/system/boardnbd.socket",
			"/usr/lib/sysusers.d/boardnbd.conf", "/etc/boardnbd/config.yaml",
		}, []string{"/etc/init.d/boardnbd"}, "/usr/lib/systemd/system/boardnbd.service"},
		{"/usr/local", "systemd", []string{
			"/usr/local/bin/boardnbd", "/usr/local/share/man/man8/boardnbd.8",
			"/usr/local/lib/systemd/system/boardnbd.service", "/etc/boardnbd/config.yaml",
		}, nil, "/usr/local/lib/systemd/system/boardnbd.service"},
		{"/usr", "openrc", []string{
			"/usr/bin/boardnbd", "/etc/init.d/boardnbd", "/etc/conf.d/boardnbd", "/etc/boardnbd/config.yaml",
		}, []string{"/usr/lib/systemd/system/boardnbd.service"}, "/etc/init.d/boardnbd"},
	} {
		t.Run(strings.TrimPrefix(tc.prefix, "/")+"-"+tc.init, func(t *testing.T) {
			dest := t.TempDir()
			args := []string{"install", "DESTDIR=" + dest, "PREFIX=" + tc.prefix, "INIT=" + tc.init, "BIN=" + bin}
			if out, err := runMake(t, args...); err != nil {
				t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			for _, f := range tc.files {
				if _, err := os.Stat(filepath.Join(dest, f)); err != nil {
					t.Errorf("make install: %v", err)
				}
			}
			for _, f := range tc.absent {
				if _, err := os.Stat(filepath.Join(dest, f)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("make install INIT=%s installed %s", tc.init, f)
				}
			}
			unit := string(readFile(t, filepath.Join(dest, tc.runsFrom)))
			binPath := tc.prefix + "/bin/boardnbd"
			if !regexp.MustCompile(`(?m)^(ExecStart=|command=")` + regexp.QuoteMeta(binPath) + `\b`).MatchString(unit) {
				t.Errorf("%s does not run %s:\n%s", tc.runsFrom, binPath, unit)
			}
			if st, err := os.Stat(filepath.Join(dest, binPath)); err == nil && st.Mode().Perm() != 0o755 {
				t.Errorf("%s mode %v, want 0755", binPath, st.Mode().Perm())
			}

			// A second install keeps the admin's config.
			conf := filepath.Join(dest, "etc/boardnbd/config.yaml")
			mine := []byte("version: 1\n# mine\n")
			if err := os.WriteFile(conf, mine, 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := runMake(t, args...); err != nil {
				t.Fatalf("make %s (again): %v\n%s", strings.Join(args, " "), err, out)
			}
			if got := readFile(t, conf); string(got) != string(mine) {
				t.Errorf("a second make install replaced /etc/boardnbd/config.yaml")
			}
		})
	}
	if out, err := runMake(t, "install", "DESTDIR="+t.TempDir(), "INIT=upstart", "BIN="+bin); err == nil {
		t.Errorf("make install INIT=upstart succeeded; want an error naming the choices:\n%s", out)
	}
}

// The README has the section on packages and boards, with a sizes row
// for every target.
func TestReadmeSizes(t *testing.T) {
	readme := string(readFile(t, "../README.md"))
	if !strings.Contains(readme, "\n## Packages and boards\n") || !strings.Contains(readme, "Binary sizes") {
		t.Fatal("README.md lacks the \"## Packages and boards\" section with \"Binary sizes\"")
	}
	for _, tg := range targets {
		if !regexp.MustCompile(`(?m)^\| linux-` + tg.name + ` \| .* MiB`).MatchString(readme) {
			t.Errorf("README.md: no binary size row for linux-%s", tg.name)
		}
	}
}
