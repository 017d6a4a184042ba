package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"

	"boardnbd/config"
	"boardnbd/nbd"
)

// drainTimeout bounds how long SIGTERM waits for requests in flight.
const drainTimeout = 30 * time.Second

// appliance is one running boardnbd: the configuration, the exports with
// their open storage, and the NBD server.
type appliance struct {
	log     *slog.Logger
	mu      sync.Mutex // serialises reloads
	cfg     *config.Config
	exports *exportSet
	srv     *nbd.Server
}

// newAppliance opens the storage of every export in cfg. It fails on the
// first export that cannot be opened, naming it. A lazy appliance (inetd
// mode: one process per client) opens only what its client asks for, when
// it asks, so that one client's export being busy or absent does not turn
// away a client of another.
func newAppliance(cfg *config.Config, log *slog.Logger, lazy bool) (*appliance, error) {
	list, err := buildExports(cfg, nil, log, lazy)
	if err != nil {
		return nil, err
	}
	tlsConfig, err := serverTLS(cfg.TLS)
	if err != nil {
		for _, e := range list {
			e.retire()
		}
		return nil, err
	}
	set := &exportSet{list: list}
	a := &appliance{log: log, cfg: cfg, exports: set}
	a.srv = &nbd.Server{
		TLSConfig:        tlsConfig,
		RequireTLS:       cfg.TLS.EffectiveMode() == config.TLSRequired,
		Exports:          set,
		Logger:           log,
		HandshakeTimeout: cfg.Limits.HandshakeTimeout,
		MaxInFlight:      cfg.Limits.MaxInFlight,
		MaxPayload:       uint32(cfg.Limits.MaxPayload),
		MaxConnections:   cfg.Limits.MaxConnections,
	}
	return a, nil
}

// buildExports makes the exports of cfg, reusing from old every export
// whose configuration is unchanged (its storage and its clients stay).
func buildExports(cfg *config.Config, old []*served, log *slog.Logger, lazy bool) ([]*served, error) {
	var list []*served
	for _, ec := range cfg.Exports {
		i := slices.IndexFunc(old, func(o *served) bool { return o.cfg.Equal(&ec) })
		if i >= 0 {
			list = append(list, old[i])
			continue
		}
		e, err := newServed(ec, cfg.TLS, log, lazy)
		if err != nil {
			for _, n := range list {
				if !slices.Contains(old, n) {
					n.retire()
				}
			}
			return nil, err
		}
		list = append(list, e)
	}
	return list, nil
}

// reload applies a new configuration: added exports appear, removed and
// changed ones stop taking connections (their clients keep what they
// have), unchanged ones are untouched. Listen addresses and limits are
// kept from the start.
func (a *appliance) reload(cfg *config.Config) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !slices.Equal(cfg.Listen, a.cfg.Listen) || cfg.Limits != a.cfg.Limits || cfg.TLS != a.cfg.TLS {
		a.log.Warn("reload: listen, limits and tls changes take effect at the next restart")
	}
	old := a.exports.exports()
	list, err := buildExports(cfg, old, a.log, false)
	if err != nil {
		return err
	}
	a.exports.swap(list)
	var added, removed, kept []string
	for _, e := range old {
		if !slices.Contains(list, e) {
			removed = append(removed, e.cfg.Name)
			e.retire()
		}
	}
	for _, e := range list {
		if slices.Contains(old, e) {
			kept = append(kept, e.cfg.Name)
		} else {
			added = append(added, e.cfg.Name)
		}
	}
	a.cfg = cfg
	a.log.Info("configuration reloaded", "added", added, "removed or changed", removed, "kept", kept)
	return nil
}

// listeners returns the sockets systemd passed (socket activation), or
// opens the configured ones.
func (a *appliance) listeners() ([]net.Listener, error) {
	lns, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	lns = slices.DeleteFunc(lns, func(l net.Listener) bool { return l == nil })
	if len(lns) > 0 {
		a.log.Info("using sockets from systemd (socket activation); listen: is ignored", "sockets", len(lns))
		return lns, nil
	}
	for _, addr := range a.cfg.Listen {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("listen on %s: %w (is another NBD server running? change listen: in the config)", addr, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// run serves on lns until ctx ends, reloading configPath on SIGHUP when
// there is one, then drains the connections. It returns nil after a clean
// shutdown.
func (a *appliance) run(ctx context.Context, lns []net.Listener, configPath string) error {
	defer a.exports.close()
	for _, e := range a.exports.exports() {
		a.logExport(e)
	}
	errc := make(chan error, len(lns))
	var wg sync.WaitGroup
	for _, ln := range lns {
		a.log.Info("listening", "addr", ln.Addr().String())
		wg.Go(func() { errc <- a.srv.Serve(ln) })
	}
	ad, aerr := a.startAdvertising(lns)
	if aerr != nil {
		a.log.Error("discovery failed; serving without advertising (set discovery.enabled: false to silence this)", "err", aerr)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	var err error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err = <-errc:
			a.log.Error("listener failed", "err", err)
			break loop
		case <-hup:
			if configPath == "" {
				a.log.Warn("SIGHUP ignored: not serving from a config file")
				continue
			}
			cfg, lerr := config.Load(configPath)
			if lerr == nil {
				lerr = a.reload(cfg)
			}
			if lerr != nil {
				a.log.Error("reload rejected; still serving the previous configuration", "file", configPath, "err", lerr)
			}
			ad.refresh()
		}
	}
	// Withdraw the exports from the network first, so that no new client
	// comes while the others drain.
	ad.close()
	a.log.Info("shutting down; draining connections", "connections", a.srv.Connections())
	sctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	if serr := a.srv.Shutdown(sctx); serr != nil {
		a.log.Warn("drain timed out; connections closed", "err", serr)
	}
	wg.Wait()
	if errors.Is(err, nbd.ErrServerClosed) {
		err = nil
	}
	return err
}

func (a *appliance) logExport(e *served) {
	if e.perClient() {
		a.log.Info("export ready (storage per client address)", "export", e.cfg.Name, "path", e.cfg.Path)
		return
	}
	st := e.current()
	if st == nil {
		a.log.Warn("export unavailable: storage absent", "export", e.cfg.Name, "path", e.cfg.Path)
		return
	}
	a.log.Info("export ready", "export", e.cfg.Name, "path", e.cfg.Path, "kind", kindName(st),
		"size", st.b.Size(), "readonly", e.cfg.ReadOnly || st.b.Info().ReadOnly && e.cfg.CopyOnWrite == "")
}

func kindName(st *storage) string {
	if st.desc.Kind == 0 {
		return "multifile"
	}
	return st.desc.Kind.String()
}
