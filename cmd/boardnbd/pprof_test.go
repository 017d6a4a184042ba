//go:build pprof

package main

import (
	"log/slog"
	"net/http"
	"testing"
)

func TestPprofOnlyOnLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:6060", ":6060", "192.0.2.1:6060", "localhost"} {
		if ln, err := startPprof(addr, slog.New(slog.DiscardHandler)); err == nil {
			ln.Close()
			t.Errorf("startPprof(%q) listened; want it refused (loopback only)", addr)
		}
	}
	ln, err := startPprof("127.0.0.1:0", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	resp, err := http.Get("http://" + ln.Addr().String() + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET goroutine profile = %s", resp.Status)
	}
}
