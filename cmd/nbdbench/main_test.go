//go:build linux

package main

import (
	"slices"
	"strings"
	"testing"

	"boardnbd/config"
)

func TestParseServers(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		err  bool
	}{
		{"boardnbd,nbdkit,nbd-server,qemu-nbd", allServers, false},
		{"qemu-nbd, boardnbd", []string{srvBoardnbd, srvQemuNbd}, false}, // report order
		{"nbdkit,,", []string{srvNbdkit}, false},
		{"", nil, true},
		{"boardnbd,tgt", nil, true},
	}
	for _, tt := range tests {
		got, err := parseServers(tt.in)
		if (err != nil) != tt.err || !slices.Equal(got, tt.want) {
			t.Errorf("parseServers(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestParseWorkloads(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		err  bool
	}{
		{"", strings.Split(workloadKeys(), ","), false},
		{"read1m8,seqread1", []string{"seqread1", "read1m8"}, false},
		{"seqread1,bogus", nil, true},
	}
	for _, tt := range tests {
		got, err := parseWorkloads(tt.in)
		var keys []string
		for _, w := range got {
			keys = append(keys, w.key)
		}
		if (err != nil) != tt.err || !slices.Equal(keys, tt.want) {
			t.Errorf("parseWorkloads(%q) = %q, %v; want %q, error %v", tt.in, keys, err, tt.want, tt.err)
		}
	}
}

func TestParseConns(t *testing.T) {
	tests := []struct {
		in   string
		want []int
		err  bool
	}{
		{"100,1000", []int{100, 1000}, false},
		{"", nil, false},
		{"0", nil, true},
		{"ten", nil, true},
	}
	for _, tt := range tests {
		got, err := parseConns(tt.in)
		if (err != nil) != tt.err || !slices.Equal(got, tt.want) {
			t.Errorf("parseConns(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestCommandLine(t *testing.T) {
	tests := []struct {
		argv []string
		want string
	}{
		{[]string{"/tmp/go-build123/b001/exe/nbdbench", "-quick"}, "go run ./cmd/nbdbench -quick"},
		{[]string{"./nbdbench", "-servers", "boardnbd,nbdkit"}, "./nbdbench -servers boardnbd,nbdkit"},
		{[]string{"nbdbench", "-dir", "/mnt/my tmp", ""}, "nbdbench -dir '/mnt/my tmp' ''"},
	}
	for _, tt := range tests {
		if got := commandLine(tt.argv); got != tt.want {
			t.Errorf("commandLine(%q) = %q, want %q", tt.argv, got, tt.want)
		}
	}
}

func TestParseProgress(t *testing.T) {
	tests := []struct {
		in   string
		want int
		ok   bool
	}{
		{"42/100", 42, true},
		{"100/100\n", 100, true},
		{"0/100", 0, true},
		{"101/100", 0, false},
		{"42%", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, ok := parseProgress(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseProgress(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
	if got := lastProgress(strings.NewReader("0/100\n10/100\njunk\n57/100\n")); got != 57 {
		t.Errorf("lastProgress() = %d, want 57", got)
	}
}

// TestFootprintConfig loads the footprint's config through boardnbd's own
// loader, so a change of the schema breaks this test, not the bench run.
func TestFootprintConfig(t *testing.T) {
	images := []string{"/dev/shm/x/disk0.img", "/dev/shm/x/disk 1.img"}
	cfg, err := config.Parse([]byte(footprintConfig("127.0.0.1:10809", images, 1016)), "footprint.yaml")
	if err != nil {
		t.Fatalf("config.Parse: %v", err)
	}
	if cfg.Limits.MaxConnections != 1016 || cfg.Discovery.Enabled || !slices.Equal(cfg.Listen, []string{"127.0.0.1:10809"}) {
		t.Errorf("config = limits %+v, discovery %v, listen %q", cfg.Limits, cfg.Discovery.Enabled, cfg.Listen)
	}
	if len(cfg.Exports) != 2 || cfg.Exports[0].Name != "disk0" || cfg.Exports[1].Path != images[1] {
		t.Errorf("exports = %+v, want disk0 and disk1 on the images", cfg.Exports)
	}
}

func TestNbdServerConfig(t *testing.T) {
	got := nbdServerConfig(10809, "disk", "/dev/shm/x/disk")
	want := "[generic]\n    port = 10809\n    listenaddr = 127.0.0.1\n[disk]\n    exportname = /dev/shm/x/disk\n"
	if got != want {
		t.Errorf("nbdServerConfig() = %q, want %q", got, want)
	}
}

func TestRotate(t *testing.T) {
	s := []*server{{name: "a"}, {name: "b"}, {name: "c"}}
	for r, want := range []string{"abc", "bca", "cab", "abc"} {
		var got string
		for _, x := range rotate(s, r) {
			got += x.name
		}
		if got != want {
			t.Errorf("rotate(round %d) = %s, want %s", r, got, want)
		}
	}
}
