//go:build !linux

package nbd

// Elsewhere the rest of a payload is read as it comes (lag_linux.go).

type lagState struct{ on bool }

func (l *lagState) begin(bool) {}
func (l *lagState) read(*lowMark, uintptr, []byte) (int, error) {
	panic("nbd: lagState.read without lag")
}
