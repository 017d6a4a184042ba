package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"boardnbd/config"
)

var manPages = []string{"boardnbd.8", "boardnbd.yaml.5"}

// groff formats both pages with every warning on and has nothing to say.
func TestManPagesGroffClean(t *testing.T) {
	need(t, "groff")
	for _, page := range manPages {
		out, errOut, err := run(t, time.Minute, "groff", "-man", "-Tutf8", "-ww", "-z", page)
		if err != nil || errOut != "" || out != "" {
			t.Errorf("groff -man -ww %s: %v\n%s%s", page, err, out, errOut)
		}
	}
}

// man renders the gzipped pages as the .deb installs them, without
// warnings, with the sections a reader looks for.
func TestManPagesRenderFromPackage(t *testing.T) {
	dir, _ := built(t)
	need(t, "man", "dpkg-deb")
	tg, ok := hostTarget()
	if !ok {
		tg = targets[0]
	}
	root := t.TempDir()
	mustRun(t, "dpkg-deb", "--extract", distFile(dir, tg, ".deb"), root)
	for _, tc := range []struct {
		path     string
		sections []string
	}{
		{"usr/share/man/man8/boardnbd.8.gz", []string{"NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "SIGNALS", "SOCKET ACTIVATION", "FILES", "EXIT STATUS", "EXAMPLES", "SEE ALSO"}},
		{"usr/share/man/man5/boardnbd.yaml.5.gz", []string{"NAME", "DESCRIPTION", "EXPORTS", "SIZES AND DURATIONS", "EXAMPLES", "SEE ALSO"}},
	} {
		cmd := exec.Command("man", "--warnings=all", "-l", filepath.Join(root, tc.path))
		cmd.Env = append(os.Environ(), "MANWIDTH=80", "MANPAGER=cat", "PAGER=cat", "LC_ALL=C.UTF-8")
		var errOut strings.Builder
		cmd.Stderr = &errOut
		out, err := cmd.Output()
		if err != nil || errOut.Len() > 0 {
			t.Errorf("man -l %s: %v\n%s", tc.path, err, errOut.String())
		}
		for _, s := range tc.sections {
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(s) + `$`).Match(out) {
				t.Errorf("man -l %s: no section %s", tc.path, s)
			}
		}
	}
}

// boardnbd.8 documents every command that boardnbd's usage lists.
func TestManPageCoversCommands(t *testing.T) {
	src, err := os.ReadFile("../cmd/boardnbd/main.go")
	if err != nil {
		t.Fatal(err)
	}
	usage := regexp.MustCompile("(?s)const usage = `(.*?)`").FindSubmatch(src)
	if usage == nil {
		t.Fatal("cmd/boardnbd/main.go has no usage constant")
	}
	page := string(readFile(t, "boardnbd.8"))
	cmds := regexp.MustCompile(`(?m)^\s+boardnbd (\w+)`).FindAllStringSubmatch(string(usage[1]), -1)
	if len(cmds) == 0 {
		t.Fatal("no commands found in boardnbd's usage")
	}
	for _, c := range cmds {
		if !regexp.MustCompile(`(?m)^\.B boardnbd ` + c[1] + `\b`).MatchString(page) {
			t.Errorf("packaging/boardnbd.8: SYNOPSIS lacks \"boardnbd %s\", which boardnbd's usage lists; document it there (and under COMMANDS)", c[1])
		}
	}
}

// boardnbd.yaml.5 documents every key of the complete file in the config
// package's documentation, and its examples load.
func TestConfigManPageCoversKeys(t *testing.T) {
	doc, err := os.ReadFile("../config/doc.go")
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile(`(?s)// A complete file.*?\n//\n(.*?)\n//\n`).FindSubmatch(doc)
	if block == nil {
		t.Fatal("config/doc.go: no \"A complete file\" example found")
	}
	page := string(readFile(t, "boardnbd.yaml.5"))
	keys := regexp.MustCompile(`(?m)^//\t\s*(?:- )?([a-z_]+):`).FindAllStringSubmatch(string(block[1]), -1)
	if len(keys) < 20 {
		t.Fatalf("found only %d keys in config/doc.go's complete file", len(keys))
	}
	for _, k := range keys {
		if !regexp.MustCompile(`(?m)^\.BR? (?:.*[ ".])?` + k[1] + `\b`).MatchString(page) {
			t.Errorf("packaging/boardnbd.yaml.5 does not document the key %s of config/doc.go's complete file; add it there", k[1])
		}
	}

	examples := regexp.MustCompile(`(?s)\n\.EX\n(version: .*?)\.EE\n`).FindAllStringSubmatch(page, -1)
	if len(examples) == 0 {
		t.Fatal("boardnbd.yaml.5 has no EXAMPLES that start with version:")
	}
	unroff := strings.NewReplacer(`\-`, "-", `\e`, `\`, `\&`, "")
	for i, ex := range examples {
		yaml := unroff.Replace(ex[1])
		if _, err := config.Parse([]byte(yaml), "boardnbd.yaml.5"); err != nil {
			t.Errorf("boardnbd.yaml.5 example %d does not load:\n%v\n%s", i+1, err, yaml)
		}
	}
}
