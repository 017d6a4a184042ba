package config

import (
	"fmt"
	"strconv"
	"strings"
)

// sizeUnits are the units ParseSize accepts, all powers of 1024.
var sizeUnits = map[string]int64{
	"":    1,
	"B":   1,
	"K":   1 << 10,
	"KiB": 1 << 10,
	"M":   1 << 20,
	"MiB": 1 << 20,
	"G":   1 << 30,
	"GiB": 1 << 30,
	"T":   1 << 40,
	"TiB": 1 << 40,
}

// ParseSize parses a whole number of bytes with an optional binary unit:
// "4096", "64KiB", "64K", "512 MiB", "4GiB", "1TiB". K, M, G and T mean
// KiB, MiB, GiB and TiB. The decimal-looking KB, MB, GB and TB are
// rejected as ambiguous, and so are fractions and negative sizes.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	switch {
	case strings.HasPrefix(t, "-"):
		return 0, fmt.Errorf("%s is negative", quote(s))
	case num == "":
		return 0, fmt.Errorf(`%s is not a size (want bytes, or a number with a unit such as "512MiB")`, quote(s))
	case strings.HasPrefix(unit, ".") || strings.HasPrefix(unit, ","):
		return 0, fmt.Errorf(`%s is not a whole number (want e.g. "1536MiB" for 1.5GiB)`, quote(s))
	}
	mult, ok := sizeUnits[unit]
	if !ok {
		switch strings.ToUpper(unit) {
		case "KB", "MB", "GB", "TB":
			return 0, fmt.Errorf("%s: unit %q is ambiguous (write %ciB for powers of 1024)", quote(s), unit, strings.ToUpper(unit)[0])
		}
		return 0, fmt.Errorf("%s: unknown unit %s (want B, KiB, MiB, GiB or TiB)", quote(s), quote(unit))
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n > (1<<63-1)/mult {
		return 0, fmt.Errorf("%s is too large", quote(s))
	}
	return n * mult, nil
}

// formatSize writes n bytes in the largest unit that divides it exactly,
// as ParseSize reads it back.
func formatSize(n int64) string {
	for _, u := range []struct {
		name string
		mult int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10)
}
