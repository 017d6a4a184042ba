//go:build linux

package main

import (
	"errors"
	"os"
	"testing"
)

func TestParseStraceSummaryFile(t *testing.T) {
	// strace 6.1 -c -f -p against nbdkit during a fio run.
	b, err := os.ReadFile("testdata/strace-c-nbdkit.txt")
	if err != nil {
		t.Fatal(err)
	}
	total, rows, err := parseStraceSummary(b)
	if err != nil {
		t.Fatalf("parseStraceSummary error = %v", err)
	}
	if total.calls != 5284 || !same(total.seconds, 7.276353) {
		t.Errorf("total = %+v, want 5284 calls in 7.276353 s", total)
	}
	if len(rows) != 24 {
		t.Errorf("got %d rows, want 24", len(rows))
	}
	var sum int64
	for _, r := range rows {
		sum += r.calls
	}
	if sum != total.calls {
		t.Errorf("rows add up to %d calls, total says %d", sum, total.calls)
	}
	if rows[0] != (syscallCount{"sendto", 1909, 0.133508}) {
		t.Errorf("most called = %+v, want sendto 1909", rows[0])
	}
}

func TestParseStraceSummary(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		total int64
		first syscallCount
		err   error
	}{
		{
			name: "errors column present and absent",
			in: `% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 60.00    0.060000           6     10000           pread64
 40.00    0.040000           2     20000       100 futex
------ ----------- ----------- --------- --------- ----------------
100.00    0.100000           3     30000       100 total
`,
			total: 30000,
			first: syscallCount{"futex", 20000, 0.04},
		},
		{
			name: "strace messages around the table",
			in: `strace: Process 12 attached with 3 threads
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
100.00    0.000010          10         1           read
------ ----------- ----------- --------- --------- ----------------
100.00    0.000010          10         1           total
`,
			total: 1,
			first: syscallCount{"read", 1, 0.00001},
		},
		{name: "empty", in: "", err: errStraceSummary},
		{name: "no total", in: " 60.00    0.060000           6     10000           pread64\n", err: errStraceSummary},
		{name: "bad calls", in: "100.00    0.1           3     many           total\n", err: errStraceSummary},
		{name: "bad seconds", in: "100.00    x           3     1           total\n", err: errStraceSummary},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			total, rows, err := parseStraceSummary([]byte(tt.in))
			if !errors.Is(err, tt.err) {
				t.Fatalf("parseStraceSummary error = %v, want %v", err, tt.err)
			}
			if tt.err != nil {
				return
			}
			if total.calls != tt.total {
				t.Errorf("total = %d, want %d", total.calls, tt.total)
			}
			if len(rows) == 0 || rows[0].name != tt.first.name || rows[0].calls != tt.first.calls || !same(rows[0].seconds, tt.first.seconds) {
				t.Errorf("rows = %+v, want %+v first", rows, tt.first)
			}
		})
	}
}

func FuzzParseStraceSummary(f *testing.F) {
	if b, err := os.ReadFile("testdata/strace-c-nbdkit.txt"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("100.00    0.1           3     1           total\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		total, rows, err := parseStraceSummary(b)
		if err != nil {
			return
		}
		if total.calls < 0 {
			t.Errorf("negative total %d", total.calls)
		}
		for _, r := range rows {
			if r.calls < 0 || r.seconds < 0 {
				t.Errorf("negative row %+v", r)
			}
		}
	})
}
