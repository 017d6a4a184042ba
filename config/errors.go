package config

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// An Error is one problem in a configuration, located as precisely as the
// source allows.
type Error struct {
	File string // file name given to Parse; "" for a Config built in code
	Line int    // 1-based line in File; 0 if unknown
	Key  string // dotted path of the offending key, e.g. "exports[1].allow[0]"; "" for the whole file
	Msg  string // what is wrong, naming the value
}

// Error formats e as "file:line: key: msg", leaving out the parts that are
// unknown.
func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		b.WriteString(e.File + ":" + strconv.Itoa(e.Line) + ": ")
	case e.File != "":
		b.WriteString(e.File + ": ")
	case e.Line > 0:
		b.WriteString("line " + strconv.Itoa(e.Line) + ": ")
	}
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one configuration, in line order.
// Parse, Load and Validate return it as their error, never empty.
type Errors []*Error

// Error formats the problems one per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns the problems, so errors.As can find an *Error.
func (es Errors) Unwrap() []error {
	errs := make([]error, len(es))
	for i, e := range es {
		errs[i] = e
	}
	return errs
}

// sortByLine orders problems by line, problems without a line first.
// Problems on one line, as in a flow list, go by key, with indexes in
// numeric order: allow[2] before allow[10].
func (es Errors) sortByLine() {
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].Line != es[j].Line {
			return es[i].Line < es[j].Line
		}
		return keyLess(es[i].Key, es[j].Key)
	})
}

// keyLess compares keys as text, except that runs of digits compare as
// numbers.
func keyLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := digits(a), digits(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if len(na) != len(nb) {
				return len(na) < len(nb)
			}
			if na != nb {
				return na < nb
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

// digits returns the length of the run of ASCII digits that starts s.
func digits(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}

// maxProblems is the most problems reported at once. A file with more is
// likely not a configuration file, or has one mistake repeated.
const maxProblems = 100

// limit cuts es to maxProblems, and says how many problems it left out
// beyond those already dropped.
func (es Errors) limit(file string, dropped int) Errors {
	if len(es) > maxProblems {
		dropped += len(es) - maxProblems
		es = es[:maxProblems]
	}
	if dropped > 0 {
		es = append(es, &Error{File: file, Msg: fmt.Sprintf("and %d more problems", dropped)})
	}
	return es
}

// err returns es as an error, or nil if there are no problems. It exists
// so that an empty Errors never becomes a non-nil error interface.
func (es Errors) err() error {
	if len(es) == 0 {
		return nil
	}
	return es
}
