package config

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// docBlocks returns the indented blocks of the package doc.
func docBlocks(t *testing.T) []string {
	t.Helper()
	src, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	var cur []string
	for _, line := range strings.Split(string(src), "\n") {
		if text, ok := strings.CutPrefix(line, "//\t"); ok {
			cur = append(cur, text)
			continue
		}
		if cur != nil {
			blocks = append(blocks, strings.Join(cur, "\n")+"\n")
			cur = nil
		}
	}
	return blocks
}

// TestDocExamples checks that the YAML in the package doc parses, and
// that the first, the complete file, shows the defaults.
func TestDocExamples(t *testing.T) {
	blocks := docBlocks(t)
	if len(blocks) < 2 {
		t.Fatalf("doc.go has %d examples, want at least 2", len(blocks))
	}
	for i, b := range blocks {
		if strings.HasPrefix(b, "config.yaml:") {
			continue // a message, not a file
		}
		if !strings.Contains(b, "version:") {
			b = "version: 1\n" + b
		}
		c, err := Parse([]byte(b), "doc.go")
		if err != nil {
			t.Errorf("Parse(doc example %d) error = %v\n%s", i, err, b)
			continue
		}
		if i != 0 {
			continue
		}
		want := Default()
		want.File = "doc.go"
		e := DefaultExport()
		e.Name, e.Path, e.Line = "rootfs", "/dev/mmcblk0p2", c.Exports[0].Line
		want.Exports = []Export{e}
		if got := withoutPos(c); !reflect.DeepEqual(got, want) {
			t.Errorf("Parse(doc example %d) =\n%+v\nwant the defaults\n%+v", i, got, want)
		}
	}
}
