//go:build linux

package main

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

var errStraceSummary = errors.New("nbdbench: unusable strace -c summary")

// syscallCount is one row of strace -c's summary.
type syscallCount struct {
	name    string
	calls   int64
	seconds float64 // system time in the calls
}

// parseStraceSummary reads the table strace -c writes when it detaches:
//
//	% time     seconds  usecs/call     calls    errors syscall
//	------ ----------- ----------- --------- --------- ----------------
//	 52.10    0.104000           5     20000           sendmsg
//	...
//	100.00    0.199600           3     60000        12 total
//
// It returns the total line and the rows, most calls first. The errors
// column is empty for syscalls that never failed, so the columns are
// found by position from the left.
func parseStraceSummary(b []byte) (syscallCount, []syscallCount, error) {
	var rows []syscallCount
	total := syscallCount{calls: -1}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 || len(f) > 6 {
			continue
		}
		if _, err := strconv.ParseFloat(f[0], 64); err != nil {
			continue // header, rule, or a message
		}
		secs, err := strconv.ParseFloat(f[1], 64)
		if err != nil || secs < 0 {
			return total, nil, fmt.Errorf("%w: seconds %q in %q", errStraceSummary, f[1], sc.Text())
		}
		calls, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil || calls < 0 {
			return total, nil, fmt.Errorf("%w: calls %q in %q", errStraceSummary, f[3], sc.Text())
		}
		row := syscallCount{name: f[len(f)-1], calls: calls, seconds: secs}
		if row.name == "total" {
			total = row
			continue
		}
		rows = append(rows, row)
	}
	if total.calls < 0 {
		return total, nil, fmt.Errorf("%w: no total line", errStraceSummary)
	}
	slices.SortStableFunc(rows, func(a, b syscallCount) int { return cmp.Compare(b.calls, a.calls) })
	return total, rows, nil
}
