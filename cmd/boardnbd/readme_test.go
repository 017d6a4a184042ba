package main

import (
	"os"
	"regexp"
	"testing"

	"boardnbd/config"
)

// Every YAML example in the README is a config a user may paste: it must
// pass the real loader.
func TestReadmeYAMLExamples(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllSubmatch(readme, -1)
	if len(blocks) == 0 {
		t.Fatal("README.md has no yaml examples")
	}
	for i, b := range blocks {
		if _, err := config.Parse(b[1], "README.md example"); err != nil {
			t.Errorf("README yaml example %d does not load:\n%v\n%s", i+1, err, b[1])
		}
	}
}
