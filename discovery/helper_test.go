package discovery

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// The integration tests run parts of this package inside network
// namespaces by starting this test binary again under "ip netns exec"
// with helperEnv set; TestMain then runs the helper instead of the tests.
const (
	helperEnv       = "BOARDNBD_DISCOVERY_HELPER"
	helperConfigEnv = "BOARDNBD_DISCOVERY_HELPER_CONFIG"
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "advertise":
		os.Exit(helperAdvertise())
	case "browse":
		os.Exit(helperBrowse())
	case "listen":
		os.Exit(helperListen())
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", helperEnv, os.Getenv(helperEnv))
		os.Exit(2)
	}
}

// helperCommand is one line the test writes to the advertise helper.
type helperCommand struct {
	Op      string   // "update" or "close"
	Exports []Export // for update
}

// helperReply is one line the advertise helper writes back.
type helperReply struct {
	Backend string `json:",omitempty"`
	Err     string `json:",omitempty"`
}

// helperAdvertise runs New with the Config in helperConfigEnv and obeys
// the commands on standard input; at end of input it closes.
func helperAdvertise() int {
	var cfg Config
	if err := json.Unmarshal([]byte(os.Getenv(helperConfigEnv)), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	out := json.NewEncoder(os.Stdout)
	adv, err := New(cfg)
	if err != nil {
		out.Encode(helperReply{Err: err.Error()})
		return 1
	}
	out.Encode(helperReply{Backend: adv.Backend()})
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var c helperCommand
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			out.Encode(helperReply{Err: err.Error()})
			continue
		}
		var err error
		switch c.Op {
		case "update":
			err = adv.Update(c.Exports)
		case "close":
			err = adv.Close()
		default:
			err = fmt.Errorf("unknown op %q", c.Op)
		}
		r := helperReply{Backend: adv.Backend()}
		if err != nil {
			r.Err = err.Error()
		}
		out.Encode(r)
	}
	adv.Close()
	return 0
}

// helperBrowse runs one Browse with the BrowseConfig in helperConfigEnv
// and prints the result as JSON.
func helperBrowse() int {
	var cfg BrowseConfig
	if err := json.Unmarshal([]byte(os.Getenv(helperConfigEnv)), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	found, err := Browse(context.Background(), cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	json.NewEncoder(os.Stdout).Encode(found)
	return 0
}

// listenConfig configures the listen helper.
type listenConfig struct {
	Iface   string        // interface to join the group on
	Addr    netip.Addr    // address to wait for in an A or AAAA record
	Timeout time.Duration // give up after this
}

// helperListen sends no query: it listens on UDP 5353 for multicast
// responses and exits 0 when one holds an address record of Addr, which
// proves an unsolicited announcement. It exits 1 at the timeout.
func helperListen() int {
	var cfg listenConfig
	if err := json.Unmarshal([]byte(os.Getenv(helperConfigEnv)), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	c, err := listenMDNS(cfg.Addr.Is6(), mdnsPort)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ifi, err := net.InterfaceByName(cfg.Iface)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := c.join(ifi); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("listening") // the test waits for this line
	deadline := time.Now().Add(cfg.Timeout)
	c.c.SetReadDeadline(deadline)
	buf := make([]byte, maxPacket)
	for time.Now().Before(deadline) {
		n, _, _, err := c.readFrom(buf)
		if err != nil {
			break
		}
		var m dns.Msg
		if m.Unpack(buf[:n]) != nil || !m.Response {
			continue
		}
		for _, rr := range append(m.Answer, m.Extra...) {
			var ip net.IP
			switch rr := rr.(type) {
			case *dns.A:
				ip = rr.A
			case *dns.AAAA:
				ip = rr.AAAA
			}
			if a, ok := netipAddr(ip); ok && a == cfg.Addr && rr.Header().Ttl > 0 {
				fmt.Println("seen", rr)
				return 0
			}
		}
	}
	fmt.Fprintln(os.Stderr, "no announcement of", cfg.Addr)
	return 1
}
