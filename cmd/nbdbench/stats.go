//go:build linux

package main

import (
	"math"
	"slices"
)

// median of xs, ignoring NaNs; NaN if there is nothing left. An even count
// gives the mean of the two middle values.
func median(xs []float64) float64 {
	v := slices.DeleteFunc(slices.Clone(xs), math.IsNaN)
	if len(v) == 0 {
		return math.NaN()
	}
	slices.Sort(v)
	m := len(v) / 2
	if len(v)%2 == 1 {
		return v[m]
	}
	return (v[m-1] + v[m]) / 2
}

// ratio is a/b, NaN when either is unknown or b is zero.
func ratio(a, b float64) float64 {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return math.NaN()
	}
	return a / b
}

// best picks the best known value of vals under the metric's direction and
// returns its index, or -1 if every value is NaN.
func best(vals []float64, higherBetter bool) int {
	bi := -1
	for i, v := range vals {
		if math.IsNaN(v) {
			continue
		}
		if bi < 0 || (higherBetter && v > vals[bi]) || (!higherBetter && v < vals[bi]) {
			bi = i
		}
	}
	return bi
}

// spread is (max-min)/median of the known values: how much the rounds
// disagreed. NaN with fewer than two values.
func spread(xs []float64) float64 {
	v := slices.DeleteFunc(slices.Clone(xs), math.IsNaN)
	if len(v) < 2 {
		return math.NaN()
	}
	return ratio(slices.Max(v)-slices.Min(v), median(v))
}
