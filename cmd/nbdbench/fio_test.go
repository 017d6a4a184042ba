//go:build linux

package main

import (
	"errors"
	"os"
	"slices"
	"testing"
	"time"
)

func TestParseFioFiles(t *testing.T) {
	// Real fio 3.33 reports against nbdkit: one written with --output (pure
	// JSON), one captured from standard output, where fio's nbd engine
	// prints a line before the JSON.
	tests := []struct {
		file  string
		write bool
	}{
		{"testdata/fio-randread.json", false},
		{"testdata/fio-randwrite-stdout.json", true},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			b, err := os.ReadFile(tt.file)
			if err != nil {
				t.Fatal(err)
			}
			r, err := parseFio(b, tt.write)
			if err != nil {
				t.Fatalf("parseFio(%s) error = %v", tt.file, err)
			}
			if r.iops <= 0 || r.bw <= 0 || r.ios <= 0 || r.runtime < time.Second/2 || r.p99 <= 0 || r.cpu <= 0 {
				t.Errorf("parseFio(%s) = %+v, want positive figures", tt.file, r)
			}
			// The other direction did no I/O.
			if _, err := parseFio(b, !tt.write); !errors.Is(err, errFioOutput) {
				t.Errorf("parseFio(%s, write=%v) error = %v, want %v", tt.file, !tt.write, err, errFioOutput)
			}
		})
	}
}

func TestParseFio(t *testing.T) {
	const good = `{"jobs":[{"jobname":"j","error":0,"usr_cpu":12.5,"sys_cpu":70.25,
		"read":{"bw_bytes":104857600,"iops":25600.5,"runtime":2000,"total_ios":51201,
			"clat_ns":{"N":51201,"percentile":{"50.000000":30000,"99.000000":123456,"99.900000":500000}}},
		"write":{"bw_bytes":0,"iops":0,"runtime":0,"total_ios":0,"clat_ns":{"N":0}}}]}`
	tests := []struct {
		name  string
		in    string
		write bool
		want  fioResult
		err   error
	}{
		{
			name: "read",
			in:   good,
			want: fioResult{iops: 25600.5, bw: 104857600, ios: 51201, runtime: 2 * time.Second, p99: 123456, cpu: 82.75},
		},
		{
			name: "preamble",
			in:   "fio: connected to NBD server\nfio: something else\n" + good,
			want: fioResult{iops: 25600.5, bw: 104857600, ios: 51201, runtime: 2 * time.Second, p99: 123456, cpu: 82.75},
		},
		{
			name: "no percentiles",
			in:   `{"jobs":[{"jobname":"j","read":{"bw_bytes":1,"iops":1,"runtime":1000,"total_ios":1,"clat_ns":{"N":1}}}]}`,
			want: fioResult{iops: 1, bw: 1, ios: 1, runtime: time.Second, p99: -1},
		},
		{name: "write side empty", in: good, write: true, err: errFioOutput},
		{name: "empty", in: "", err: errFioOutput},
		{name: "only messages", in: "fio: engine nbd not loadable\n", err: errFioOutput},
		{name: "truncated", in: good[:100], err: errFioOutput},
		{name: "no jobs", in: `{"jobs":[]}`, err: errFioOutput},
		{name: "two jobs", in: `{"jobs":[{},{}]}`, err: errFioOutput},
		{name: "job error", in: `{"jobs":[{"jobname":"j","error":5,"read":{"total_ios":1,"runtime":1}}]}`, err: errFioOutput},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFio([]byte(tt.in), tt.write)
			if !errors.Is(err, tt.err) {
				t.Fatalf("parseFio error = %v, want %v", err, tt.err)
			}
			if tt.err == nil && got != tt.want {
				t.Errorf("parseFio = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestFioArgs(t *testing.T) {
	got := fioArgs(fioJob{"randread", "4k", 32}, "nbd://127.0.0.1:10809/disk", 5*time.Second, "/tmp/o.json")
	for _, want := range []string{
		"--ioengine=nbd", "--uri=nbd://127.0.0.1:10809/disk", "--rw=randread", "--bs=4k",
		"--iodepth=32", "--time_based", "--runtime=5000ms", "--output-format=json", "--output=/tmp/o.json",
	} {
		if !slices.Contains(got, want) {
			t.Errorf("fioArgs() = %q, missing %q", got, want)
		}
	}
	for _, a := range got {
		if len(a) > 11 && a[:11] == "--ramp_time" {
			t.Errorf("fioArgs() has %q: ramp I/O would not be counted against the server's CPU time", a)
		}
	}
}

func FuzzParseFio(f *testing.F) {
	for _, p := range []string{"testdata/fio-randread.json", "testdata/fio-randwrite-stdout.json"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(`{"jobs":[{"read":{"total_ios":1,"runtime":1,"clat_ns":{"percentile":{"99":1}}}}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseFio(b, false)
		if err == nil && (r.ios <= 0 || r.runtime <= 0) {
			t.Errorf("parseFio accepted a report without I/O: %+v", r)
		}
	})
}
