package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/netns"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// networkOptions are a node's sandbox networking flags (docs/network.md).
type networkOptions struct {
	enabled       bool
	uplinkNetns   string
	transit       string
	dnsUpstream   string
	operatorAllow []string
	defaultMode   string
	netnsPrefix   string
	// metrics receives the connection counters (the server's registry).
	metrics prometheus.Registerer
}

func addNetworkFlags(f *pflag.FlagSet, o *networkOptions) {
	f.BoolVar(&o.enabled, "network", false, "give microVM sandboxes networks of their own (needs root, ip, nft and tc); without it sandboxes have only loopback")
	f.StringVar(&o.uplinkNetns, "network-uplink-netns", "", "network namespace (as `ip netns` names it) that holds the sandboxes' uplink and routes out; empty: the host's own")
	f.StringVar(&o.transit, "network-transit", "10.229.0.0/16", "range the sandboxes' veth pairs are numbered from (a /30 each)")
	f.StringVar(&o.dnsUpstream, "network-dns", "", "DNS server (host:port) the sandbox resolvers forward allowed queries to; empty: the first nameserver of /etc/resolv.conf")
	f.StringSliceVar(&o.operatorAllow, "network-operator-allow", nil, "CIDR prefixes sandboxes may reach although always refused otherwise (private ranges, the host); their own policy still applies")
	f.StringVar(&o.netnsPrefix, "network-netns-prefix", netns.DefaultNetnsPrefix, "start of the name of every sandbox namespace (recovery removes unowned ones with it)")
	f.StringVar(&o.defaultMode, "network-default-mode", "", "network of sandboxes whose create names none: none, open, restricted or monitored (a network with that mode); empty: no network at all, as before")
}

// defaultSpec is the network a create without one gets; nil: none.
func (o *networkOptions) defaultSpec() (*tartarus.NetworkSpec, error) {
	if o.defaultMode == "" {
		return nil, nil
	}
	if !o.enabled {
		return nil, fmt.Errorf("--network-default-mode %s needs --network", o.defaultMode)
	}
	n := &tartarus.NetworkSpec{Mode: o.defaultMode}
	if err := n.Check(); err != nil {
		return nil, fmt.Errorf("--network-default-mode: %w", err)
	}
	return n, nil
}

// open starts the node's network manager; nil without --network.
func (o *networkOptions) open(ctx context.Context, log *slog.Logger) (*netns.Manager, error) {
	if !o.enabled {
		return nil, nil
	}
	cfg := netns.Config{UplinkNetns: o.uplinkNetns, DNSUpstream: o.dnsUpstream, Logger: log, Metrics: o.metrics,
		NetnsPrefix: o.netnsPrefix}
	var err error
	if cfg.Transit, err = netip.ParsePrefix(o.transit); err != nil {
		return nil, fmt.Errorf("--network-transit: %w", err)
	}
	for _, p := range o.operatorAllow {
		pfx, err := netip.ParsePrefix(p)
		if err != nil {
			return nil, fmt.Errorf("--network-operator-allow: %w", err)
		}
		cfg.OperatorAllow = append(cfg.OperatorAllow, pfx)
	}
	m, err := netns.New(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("sandbox networking: %w", err)
	}
	log.Info("sandbox networking", "uplink_netns", o.uplinkNetns, "transit", cfg.Transit, "default_mode", o.defaultMode)
	return m, nil
}

// agentNetworks is the agent's view of the network manager (a nil
// interface, not a nil pointer, without one).
func (n *node) agentNetworks() hecatoncheir.Networks {
	if n.nets == nil {
		return nil
	}
	return n.nets
}

// collectorList is a prometheus.Registerer that only collects what is
// registered, for handing to the API's own registry.
type collectorList struct{ cs []prometheus.Collector }

func (l *collectorList) Register(c prometheus.Collector) error {
	l.cs = append(l.cs, c)
	return nil
}

func (l *collectorList) MustRegister(cs ...prometheus.Collector) { l.cs = append(l.cs, cs...) }

func (l *collectorList) Unregister(prometheus.Collector) bool { return false }

// portTokenKey reads the key that signs port access tokens from file
// (default <dataDir>/port-token.key), making a random one (0600) if it
// does not exist.
func portTokenKey(file, dataDir string) ([]byte, error) {
	if file == "" {
		file = filepath.Join(dataDir, "port-token.key")
	}
	key, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) {
			return portTokenKey(file, dataDir) // another replica made it first
		}
		if err != nil {
			return nil, fmt.Errorf("port token key: %w", err)
		}
		_, err = f.Write(key)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(file)
			return nil, fmt.Errorf("port token key: %w", err)
		}
		return key, nil
	}
	if err != nil {
		return nil, fmt.Errorf("port token key: %w", err)
	}
	if len(key) < 32 {
		return nil, fmt.Errorf("port token key %s: %d bytes, want at least 32", file, len(key))
	}
	return key, nil
}
