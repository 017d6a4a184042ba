package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"
)

// Export is what the advertiser publishes about one NBD export.
type Export struct {
	Name        string // export name
	Description string
	Size        int64
	ReadOnly    bool
	TLS         bool
	BlockSize   uint32 // minimum block size, 0 = 1/unknown
}

// Config configures New. The zero value of every field has a default.
type Config struct {
	Backend    string   // "auto" | "builtin" | "avahi"; auto = avahi over D-Bus if avahi-daemon is reachable on the system bus, else builtin
	Interfaces []string // empty = every up, multicast-capable, non-loopback interface
	Port       int      // NBD TCP port to advertise
	Host       string   // host name without .local; "" = os.Hostname() (first label)
	Board      string   // free text for TXT "board"
	Instance   string   // instance name template: %e export, %h host; "" = "%e on %h"
	Logger     *slog.Logger
}

// Advertiser publishes a set of exports until it is closed.
type Advertiser interface {
	// Update replaces the advertised set: new exports are announced, gone ones get goodbyes (TTL 0), changed ones re-announced.
	Update(exports []Export) error
	// Close sends goodbyes for everything and stops. The appliance calls it BEFORE draining NBD connections on shutdown.
	Close() error
	Backend() string // "builtin" or "avahi", for the start-up log line
}

// Backend names.
const (
	BackendAuto    = "auto"
	BackendBuiltin = "builtin"
	BackendAvahi   = "avahi"
)

// DefaultPort is the NBD port IANA assigned, advertised when Config.Port
// is 0.
const DefaultPort = 10809

// DefaultInstance is the instance name template used when
// Config.Instance is empty.
const DefaultInstance = "%e on %h"

// Sentinel errors.
var (
	// ErrClosed is what Update returns after Close.
	ErrClosed = errors.New("discovery: advertiser closed")
	// ErrNoAvahi is what New returns for Backend "avahi" when avahi-daemon
	// does not own its name on the system bus.
	ErrNoAvahi = errors.New("discovery: avahi-daemon is not reachable on the system bus")
	// ErrNoInterface is what Browse returns when no interface can send
	// queries.
	ErrNoInterface = errors.New("discovery: no up, multicast-capable interface with an address")
)

// avahiProbeTimeout bounds how long "auto" waits for the system bus.
const avahiProbeTimeout = 2 * time.Second

// New starts an advertiser with nothing to advertise yet; Update gives it
// the exports. With Backend "auto" it uses avahi-daemon when that owns its
// name on the system bus (DBUS_SYSTEM_BUS_ADDRESS is honoured), and the
// built-in responder otherwise. New fails on a bad Config, when the avahi
// backend is asked for and avahi-daemon is not reachable, or when the
// built-in responder cannot open UDP port 5353.
func New(cfg Config) (Advertiser, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	switch cfg.Backend {
	case BackendAvahi:
		return newAvahi(cfg)
	case BackendBuiltin:
		return newBuiltin(cfg)
	default: // auto
		ctx, cancel := context.WithTimeout(context.Background(), avahiProbeTimeout)
		defer cancel()
		if err := avahiReachable(ctx); err != nil {
			cfg.Logger.Debug("avahi-daemon not reachable, using the built-in responder", "err", err)
			return newBuiltin(cfg)
		}
		return newAvahi(cfg)
	}
}

// withDefaults checks cfg and fills in the defaults, in one place.
func (cfg Config) withDefaults() (Config, error) {
	switch cfg.Backend {
	case "":
		cfg.Backend = BackendAuto
	case BackendAuto, BackendBuiltin, BackendAvahi:
	default:
		return cfg, fmt.Errorf("discovery: backend %q: want auto, builtin or avahi", cfg.Backend)
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.Port < 1 || cfg.Port > 65535 {
		return cfg, fmt.Errorf("discovery: port %d: want 1 to 65535", cfg.Port)
	}
	if cfg.Host == "" {
		h, err := os.Hostname()
		if err != nil {
			return cfg, fmt.Errorf("discovery: host name: %w", err)
		}
		cfg.Host = hostLabel(h)
	} else {
		h := strings.TrimSuffix(strings.TrimSuffix(cfg.Host, "."), ".local")
		if hostLabel(h) != h {
			return cfg, fmt.Errorf("discovery: host %q: want one label of letters, digits and hyphens", cfg.Host)
		}
		cfg.Host = h
	}
	if cfg.Instance == "" {
		cfg.Instance = DefaultInstance
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg, nil
}

// buildServices names every export's instance and builds its TXT record.
// Exports that cannot be advertised are left out, and the error names
// each of them.
func buildServices(exports []Export, template, host, board string) ([]*service, error) {
	var (
		svcs  []*service
		errs  []error
		taken = make(map[string]bool)
	)
	for _, e := range exports {
		txt, err := txtRecord(e, board)
		if err != nil {
			errs = append(errs, fmt.Errorf("discovery: %w", err))
			continue
		}
		inst := uniqueInstance(renderInstance(template, e.Name, host), taken)
		taken[strings.ToLower(inst)] = true
		svcs = append(svcs, &service{instance: inst, fqdn: instanceFQDN(inst), export: e, txt: txt})
	}
	return svcs, errors.Join(errs...)
}
