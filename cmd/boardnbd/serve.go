package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"boardnbd/config"
	"boardnbd/nbd"
)

// drainTimeout bounds how long SIGTERM waits for requests in flight.
const drainTimeout = 30 * time.Second

// appliance is one running boardnbd: the configuration, the exports with
// their open storage, and the NBD server.
type appliance struct {
	log     *slog.Logger
	cfg     *config.Config
	exports *exportSet
	srv     *nbd.Server
}

// newAppliance opens the storage of every export in cfg. It fails on the
// first export that cannot be opened, naming it.
func newAppliance(cfg *config.Config, log *slog.Logger) (*appliance, error) {
	set := &exportSet{log: log}
	for _, ec := range cfg.Exports {
		e, err := newServed(ec, log)
		if err != nil {
			set.close()
			return nil, err
		}
		set.list = append(set.list, e)
	}
	a := &appliance{log: log, cfg: cfg, exports: set}
	a.srv = &nbd.Server{
		Exports:          set,
		Logger:           log,
		HandshakeTimeout: cfg.Limits.HandshakeTimeout,
		MaxInFlight:      cfg.Limits.MaxInFlight,
		MaxPayload:       uint32(cfg.Limits.MaxPayload),
		MaxConnections:   cfg.Limits.MaxConnections,
	}
	return a, nil
}

// listen opens the configured listeners.
func (a *appliance) listen() ([]net.Listener, error) {
	var lns []net.Listener
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

// run serves on lns until ctx ends, then drains the connections. It
// returns nil after a clean shutdown.
func (a *appliance) run(ctx context.Context, lns []net.Listener) error {
	defer a.exports.close()
	for _, e := range a.exports.exports() {
		if e.storage != nil {
			d := e.desc
			a.log.Info("export ready", "export", e.cfg.Name, "path", e.cfg.Path, "kind", d.Kind.String(),
				"size", e.storage.Size(), "readonly", e.cfg.ReadOnly || d.ReadOnly)
		} else {
			a.log.Info("export ready (per-client path)", "export", e.cfg.Name, "path", e.cfg.Path)
		}
	}
	errc := make(chan error, len(lns))
	var wg sync.WaitGroup
	for _, ln := range lns {
		a.log.Info("listening", "addr", ln.Addr().String())
		wg.Go(func() { errc <- a.srv.Serve(ln) })
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		a.log.Error("listener failed", "err", err)
	}
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
