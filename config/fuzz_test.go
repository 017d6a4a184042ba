package config

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzParse checks that Parse never panics, and that what it returns holds
// together: a Config that validates, or problems in this file on lines of
// this file.
func FuzzParse(f *testing.F) {
	for _, tests := range allErrorTests() {
		for _, tt := range tests {
			f.Add([]byte(tt.in))
		}
	}
	f.Add([]byte("version: 1\nx-e: &e {readonly: true}\nexports: [{<<: *e, name: a, path: /srv/%s, copy_on_write: persistent, overlay: /o/%s, size: 1GiB}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "f.yaml")
		if (c == nil) == (err == nil) {
			t.Fatalf("Parse(%q) = %v, %v: want exactly one of them", data, c, err)
		}
		if err == nil {
			if err := c.Validate(); err != nil {
				t.Fatalf("Parse(%q) succeeded but Validate() = %v", data, err)
			}
			return
		}
		var errs Errors
		if !errors.As(err, &errs) || len(errs) == 0 || len(errs) > maxProblems+1 {
			t.Fatalf("Parse(%q) error = %v, want 1 to %d problems as Errors", data, err, maxProblems+1)
		}
		// YAML ends lines with \n, \r\n or \r.
		lines := bytes.Count(data, []byte("\n")) + bytes.Count(data, []byte("\r")) + 2
		for _, e := range errs {
			if e.File != "f.yaml" || e.Msg == "" || e.Line < 0 || e.Line > lines {
				t.Fatalf("Parse(%q) problem %+v: want file f.yaml, a message, a line from 0 to %d", data, e, lines)
			}
		}
		_ = err.Error()
	})
}
