// Package netns gives each sandbox its own network: a named network
// namespace joined to an uplink by a veth pair, a TAP device in it for the
// VMM, NAT out, an egress policy enforced with nftables, a resolver that
// admits allowed domains, a bounded connection log and bandwidth limits.
//
// Every sandbox's guest has the same address (GuestAddr) inside its own
// namespace, so a snapshot restores and a fork clones without renumbering;
// only the veth (transit) addresses differ. The policy is enforced in the
// uplink namespace (the host's by default), where neither the guest nor a
// VMM in the sandbox namespace can change it. See docs/network.md.
package netns

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// The addresses every sandbox namespace uses; the guest agent configures
// the guest side from them.
var (
	GuestAddr   = netip.MustParseAddr("172.29.0.2")
	GatewayAddr = netip.MustParseAddr("172.29.0.1") // also the resolver
	GuestPrefix = netip.MustParsePrefix("172.29.0.0/30")
)

// GuestMAC is the guest NIC's MAC address, the same in every sandbox.
const GuestMAC = "52:54:00:1d:00:02"

// TapName is the TAP device inside every sandbox namespace.
const TapName = "tap0"

// sandboxVeth is the sandbox end of the veth pair, inside its namespace.
const sandboxVeth = "eth0"

// DefaultNetnsPrefix names our namespaces: prefix + sandbox id.
const DefaultNetnsPrefix = "tt-"

var validID = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// Config is how a node's sandboxes reach the network.
type Config struct {
	// UplinkNetns names an existing network namespace (as `ip netns`
	// knows it) that holds the uplink ends of the sandboxes' veth pairs,
	// with its own route out. Empty means the host's own namespace and
	// default route. Tests point it at a stand-in internet.
	UplinkNetns string
	// Transit is the range sandbox veth pairs are numbered from, a /30
	// each (default 10.229.0.0/16: 16384 sandboxes).
	Transit netip.Prefix
	// DNSUpstream is where the sandbox resolvers forward allowed queries,
	// as host:port, reached from the uplink namespace. Default: the first
	// nameserver in /etc/resolv.conf.
	DNSUpstream string
	// OperatorAllow lifts the always-refused ranges for these prefixes
	// (a sandbox's own policy still applies to them).
	OperatorAllow []netip.Prefix
	// LogGroup is the NFLOG group of the connection log (default 7411);
	// one Manager per uplink namespace may use it.
	LogGroup uint16
	// LogSize is how many records each sandbox's connection log keeps
	// (default 1024).
	LogSize int
	// NetnsPrefix starts the name of every sandbox namespace of this
	// Manager (default "tt-"); Reconcile touches only namespaces with it.
	NetnsPrefix string
	// TapUser owns the TAP devices, so an unprivileged VMM can open them.
	TapUser string
	// Clock stamps log records and DNS admissions (default the system clock).
	Clock clock.Clock
	// Logger receives what the package has to say (default discarded).
	Logger *slog.Logger
	// Metrics, when set, receives the package's Prometheus counters.
	Metrics prometheus.Registerer
}

// Validate reports every problem of the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.Transit.IsValid() {
		if !c.Transit.Addr().Is4() || c.Transit.Bits() < 8 || c.Transit.Bits() > 28 {
			errs = append(errs, fmt.Errorf("transit %s: want an IPv4 prefix between /8 and /28", c.Transit))
		}
		if c.Transit.Overlaps(GuestPrefix) {
			errs = append(errs, fmt.Errorf("transit %s overlaps the guest range %s", c.Transit, GuestPrefix))
		}
	}
	for _, p := range c.OperatorAllow {
		if !p.IsValid() || !p.Addr().Is4() {
			errs = append(errs, fmt.Errorf("operator allow %s: want an IPv4 prefix", p))
		}
	}
	if c.UplinkNetns != "" && !validID.MatchString(c.UplinkNetns) {
		errs = append(errs, fmt.Errorf("uplink netns %q: bad name", c.UplinkNetns))
	}
	if c.NetnsPrefix != "" && (!validID.MatchString(c.NetnsPrefix) || len(c.NetnsPrefix) > 16) {
		errs = append(errs, fmt.Errorf("netns prefix %q: want up to 16 of A-Z a-z 0-9 _ . -", c.NetnsPrefix))
	}
	if c.LogSize < 0 || c.LogSize > 1<<20 {
		errs = append(errs, fmt.Errorf("log size %d: want 0 (default) to %d", c.LogSize, 1<<20))
	}
	return errors.Join(errs...)
}

// Spec is what a sandbox asks of its network.
type Spec struct {
	Policy Policy `json:"policy"`
	// EgressBitsPerSec and IngressBitsPerSec limit the sandbox's upload
	// and download (0 = unlimited).
	EgressBitsPerSec  uint64 `json:"egress_bits_per_sec,omitempty"`
	IngressBitsPerSec uint64 `json:"ingress_bits_per_sec,omitempty"`
}

// Validate reports every problem of the spec.
func (s Spec) Validate() error {
	var errs []error
	if err := s.Policy.Validate(); err != nil {
		errs = append(errs, err)
	}
	for _, r := range []uint64{s.EgressBitsPerSec, s.IngressBitsPerSec} {
		if r != 0 && r < 64_000 {
			errs = append(errs, fmt.Errorf("bandwidth %d bit/s: want 0 (unlimited) or at least 64000", r))
		}
	}
	return errors.Join(errs...)
}

// Sandbox is one sandbox's network as the Manager holds it.
type Sandbox struct {
	ID string
	// Netns is the namespace's path; the VMM is started inside it.
	Netns string
	// Tap is the TAP device's name inside Netns.
	Tap string

	slot     int
	hostAddr netip.Addr // uplink end
	sbAddr   netip.Addr // sandbox end; what the uplink sees the guest as

	mu           sync.Mutex
	spec         Spec
	admitted     map[netip.Addr]time.Time // domain set contents, to carry across updates
	admittedName map[netip.Addr]string    // the name each was admitted for
	log          *ring
	dns          *resolver
}

// Manager creates, updates and removes sandbox networks on one node.
type Manager struct {
	cfg     Config
	uplink  string // path of the uplink namespace ("" = ours)
	clock   clock.Clock
	log     *slog.Logger
	metrics *metrics

	mu    sync.Mutex
	byID  map[string]*Sandbox
	slots map[int]*Sandbox

	nflog *nflogReader
	ct    *conntrackReader
}

// New prepares the uplink (our nftables table, forwarding) and starts
// reading the connection log. Sandboxes that survived a restart are kept
// (Recover re-attaches them; Reconcile removes the rest).
func New(ctx context.Context, cfg Config) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "network config: %v", err)
	}
	if !cfg.Transit.IsValid() {
		cfg.Transit = netip.MustParsePrefix("10.229.0.0/16")
	}
	if cfg.NetnsPrefix == "" {
		cfg.NetnsPrefix = DefaultNetnsPrefix
	}
	if cfg.LogGroup == 0 {
		cfg.LogGroup = 7411
	}
	if cfg.LogSize == 0 {
		cfg.LogSize = 1024
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DNSUpstream == "" {
		up, err := resolvConfUpstream("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("network: no DNS upstream configured: %w", err)
		}
		cfg.DNSUpstream = up
	}
	m := &Manager{
		cfg:    cfg,
		uplink: Path(cfg.UplinkNetns),
		clock:  cfg.Clock,
		log:    cfg.Logger.With("component", "netns"),
		byID:   map[string]*Sandbox{},
		slots:  map[int]*Sandbox{},
	}
	m.metrics = newMetrics(cfg.Metrics)
	if err := writeSysctl(m.uplink, "net.ipv4.ip_forward", "1"); err != nil {
		return nil, fmt.Errorf("network uplink: %w", err)
	}
	if err := nft(ctx, m.uplink, baseScript(cfg.Transit, cfg.OperatorAllow)); err != nil {
		return nil, fmt.Errorf("network uplink table: %w", err)
	}
	r, err := startNFLOG(m.uplink, cfg.LogGroup, m.onLog)
	if err != nil {
		return nil, fmt.Errorf("network connection log: %w", err)
	}
	m.nflog = r
	if m.ct, err = startConntrack(m.uplink, m.onFlowEnd); err != nil {
		m.nflog.close()
		return nil, fmt.Errorf("network connection log: %w", err)
	}
	return m, nil
}

// Close stops the connection log reader and the resolvers; the sandbox
// networks stay (they belong to running sandboxes).
func (m *Manager) Close() error {
	m.mu.Lock()
	sbs := make([]*Sandbox, 0, len(m.byID))
	for _, sb := range m.byID {
		sbs = append(sbs, sb)
	}
	m.mu.Unlock()
	for _, sb := range sbs {
		sb.dns.close()
	}
	return errors.Join(m.nflog.close(), m.ct.close())
}

// NetnsName is the `ip netns` name of a sandbox's namespace.
func (m *Manager) NetnsName(id string) string { return m.cfg.NetnsPrefix + id }

// Create builds a sandbox's network. On failure nothing of it remains.
func (m *Manager) Create(ctx context.Context, id string, spec Spec) (*Sandbox, error) {
	if !validID.MatchString(id) {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "sandbox id %q: want 1-64 of A-Z a-z 0-9 _ . -", id)
	}
	if err := spec.Validate(); err != nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "network: %v", err)
	}
	m.mu.Lock()
	if _, ok := m.byID[id]; ok {
		m.mu.Unlock()
		return nil, tartarus.Errorf(tartarus.ErrAlreadyExists, "network of sandbox %s", id)
	}
	slot, err := m.freeSlot()
	if err != nil {
		m.mu.Unlock()
		return nil, err
	}
	sb := m.newSandbox(id, slot, spec)
	m.byID[id], m.slots[slot] = sb, sb
	m.mu.Unlock()

	if err := m.build(ctx, sb); err != nil {
		// Cleanup must survive the caller giving up.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if derr := m.Destroy(cctx, id); derr != nil {
			m.log.Warn("clean up failed network", "sandbox", id, "err", derr)
		}
		return nil, fmt.Errorf("create network of sandbox %s: %w", id, err)
	}
	m.metrics.sandboxes.Inc()
	return sb, nil
}

func (m *Manager) newSandbox(id string, slot int, spec Spec) *Sandbox {
	base := m.cfg.Transit.Addr().As4()
	n := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	n += uint32(slot) * 4
	host := netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n + 1)})
	return &Sandbox{
		ID: id, Netns: Path(m.NetnsName(id)), Tap: TapName,
		slot: slot, hostAddr: host, sbAddr: host.Next(),
		spec: spec, admitted: map[netip.Addr]time.Time{}, admittedName: map[netip.Addr]string{},
		log: newRing(m.cfg.LogSize),
	}
}

// freeSlot picks the lowest unused slot; m.mu is held.
func (m *Manager) freeSlot() (int, error) {
	n := 1 << (32 - m.cfg.Transit.Bits() - 2)
	for i := 0; i < n; i++ {
		if _, used := m.slots[i]; !used {
			return i, nil
		}
	}
	return 0, tartarus.Errorf(tartarus.ErrResourceExhausted, "no free transit range in %s", m.cfg.Transit)
}

// build makes the namespace, the veth pair, the TAP device, both nft
// tables, the bandwidth limits and the resolver.
func (m *Manager) build(ctx context.Context, sb *Sandbox) error {
	ns := m.NetnsName(sb.ID)
	if _, err := run(ctx, "", "ip", "netns", "add", ns); err != nil {
		return err
	}
	hv := hostVeth(sb.slot)
	uplinkBatch := fmt.Sprintf(`link add %s type veth peer name %s netns %s
addr add %s/30 dev %s
link set %s up
`, hv, sandboxVeth, ns, sb.hostAddr, hv, hv)
	if _, err := run(ctx, uplinkBatch, "ip", nsArgs(m.cfg.UplinkNetns, "-batch", "-")...); err != nil {
		return err
	}
	tapUser := ""
	if m.cfg.TapUser != "" {
		tapUser = " user " + m.cfg.TapUser
	}
	sbBatch := fmt.Sprintf(`link set lo up
addr add %s/30 dev %s
link set %s up
route add default via %s
tuntap add dev %s mode tap%s
link set %s address 52:54:00:1d:00:01
addr add %s/30 dev %s
link set %s up
`, sb.sbAddr, sandboxVeth, sandboxVeth, sb.hostAddr, TapName, tapUser, TapName, GatewayAddr, TapName, TapName)
	if _, err := run(ctx, sbBatch, "ip", "-n", ns, "-batch", "-"); err != nil {
		return err
	}
	for _, kv := range [][2]string{
		{"net.ipv4.ip_forward", "1"},
		{"net.ipv6.conf.all.disable_ipv6", "1"},
		{"net.ipv6.conf.default.disable_ipv6", "1"},
	} {
		if err := writeSysctl(sb.Netns, kv[0], kv[1]); err != nil {
			return err
		}
	}
	if err := nft(ctx, sb.Netns, sandboxNSScript(sb.sbAddr)); err != nil {
		return err
	}
	sb.mu.Lock()
	script := sandboxScript(sb.slot, sb.sbAddr, m.cfg.LogGroup, sb.spec.Policy, sb.admitted, m.clock.Now())
	sb.mu.Unlock()
	if err := nft(ctx, m.uplink, script); err != nil {
		return err
	}
	if err := m.shape(ctx, sb, sb.spec); err != nil {
		return err
	}
	dns, err := startResolver(m, sb)
	if err != nil {
		return err
	}
	sb.dns = dns
	return nil
}

// shape sets (or clears) the bandwidth limits: tbf on the uplink end of
// the veth shapes what the sandbox receives, on the sandbox end what it
// sends.
func (m *Manager) shape(ctx context.Context, sb *Sandbox, spec Spec) error {
	set := func(ns, dev string, bps uint64) error {
		if bps == 0 {
			// Deleting an absent root qdisc fails; that is the state we want.
			_, _ = run(ctx, "", "tc", nsArgs(ns, "qdisc", "del", "dev", dev, "root")...)
			return nil
		}
		// A burst of 20 ms at rate, but never below a 64 KiB GSO packet.
		burst := max(bps/8/50, 64<<10)
		_, err := run(ctx, "", "tc", nsArgs(ns, "qdisc", "replace", "dev", dev, "root", "tbf",
			"rate", fmt.Sprintf("%dbit", bps), "burst", fmt.Sprint(burst), "latency", "100ms")...)
		return err
	}
	if err := set(m.cfg.UplinkNetns, hostVeth(sb.slot), spec.IngressBitsPerSec); err != nil {
		return err
	}
	return set(m.NetnsName(sb.ID), sandboxVeth, spec.EgressBitsPerSec)
}

// Get returns a sandbox's network.
func (m *Manager) Get(id string) (*Sandbox, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sb, ok := m.byID[id]
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "network of sandbox %s", id)
	}
	return sb, nil
}

// Spec returns the sandbox's current network spec.
func (sb *Sandbox) Spec() Spec {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.spec
}

// Update replaces a running sandbox's policy and bandwidth. The policy
// changes in one nft transaction, so new connections see either the old
// or the new policy, never none; open connections are kept.
func (m *Manager) Update(ctx context.Context, id string, spec Spec) error {
	if err := spec.Validate(); err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "network: %v", err)
	}
	sb, err := m.Get(id)
	if err != nil {
		return err
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	// Keep admitted addresses only while some allowed name still covers
	// them; the resolver re-admits on the next lookup otherwise.
	for a, name := range sb.admittedName {
		if ok, _ := spec.Policy.domainVerdict(name); !ok || spec.Policy.Mode != ModeRestricted {
			delete(sb.admitted, a)
			delete(sb.admittedName, a)
		}
	}
	if err := nft(ctx, m.uplink, policyScript(sb.slot, m.cfg.LogGroup, spec.Policy, sb.admitted, m.clock.Now())); err != nil {
		return fmt.Errorf("update network of sandbox %s: %w", id, err)
	}
	if err := m.shape(ctx, sb, spec); err != nil {
		return fmt.Errorf("update bandwidth of sandbox %s: %w", id, err)
	}
	sb.spec = spec
	return nil
}

// Destroy removes everything the sandbox's network owns: its resolver, its
// chains, set and map entry, its veth pair, TAP device and namespace. A
// sandbox the Manager does not know is removed by name (what Reconcile
// found). Removing what is already gone is not an error.
func (m *Manager) Destroy(ctx context.Context, id string) error {
	m.mu.Lock()
	sb := m.byID[id]
	m.mu.Unlock()
	slot := -1
	if sb != nil {
		sb.dns.close()
		slot = sb.slot
	} else if s, ok := m.slotOf(ctx, id); ok {
		slot = s
	}
	var errs []error
	if slot >= 0 {
		errs = append(errs, m.removeSlot(ctx, slot))
	}
	errs = append(errs, deleteNetns(ctx, m.NetnsName(id)))
	if sb != nil {
		m.mu.Lock()
		delete(m.byID, id)
		delete(m.slots, sb.slot)
		m.mu.Unlock()
		m.metrics.sandboxes.Dec()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("destroy network of sandbox %s: %w", id, err)
	}
	return nil
}

// removeSlot deletes a slot's uplink veth and nft objects.
func (m *Manager) removeSlot(ctx context.Context, slot int) error {
	var errs []error
	if err := nft(ctx, m.uplink, removeScript(slot)); err != nil {
		// Part of it is missing: delete what is there, one at a time.
		for _, line := range strings.Split(strings.TrimSpace(removeScript(slot)), "\n") {
			if err := nft(ctx, m.uplink, line); err != nil && !isNoSuch(err) {
				errs = append(errs, err)
			}
		}
	}
	if _, err := run(ctx, "", "ip", nsArgs(m.cfg.UplinkNetns, "link", "del", hostVeth(slot))...); err != nil && !isNoSuch(err) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func deleteNetns(ctx context.Context, ns string) error {
	if _, err := os.Stat(Path(ns)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	_, err := run(ctx, "", "ip", "netns", "del", ns)
	return err
}

func isNoSuch(err error) bool {
	s := err.Error()
	return strings.Contains(s, "No such file") || strings.Contains(s, "Cannot find device") ||
		strings.Contains(s, "does not exist")
}

// slotOf reads a sandbox's slot from the address of the veth end in its
// namespace (for namespaces left by an earlier run of the agent).
func (m *Manager) slotOf(ctx context.Context, id string) (int, bool) {
	out, err := run(ctx, "", "ip", "-n", m.NetnsName(id), "-4", "-o", "addr", "show", "dev", sandboxVeth)
	if err != nil {
		return 0, false
	}
	for _, f := range strings.Fields(string(out)) {
		if p, err := netip.ParsePrefix(f); err == nil {
			if slot, ok := m.slotOfAddr(p.Addr()); ok {
				return slot, true
			}
		}
	}
	return 0, false
}

// slotOfAddr is the slot whose transit /30 holds a.
func (m *Manager) slotOfAddr(a netip.Addr) (int, bool) {
	if !a.Is4() || !m.cfg.Transit.Contains(a) {
		return 0, false
	}
	x, b := a.As4(), m.cfg.Transit.Addr().As4()
	off := (uint32(x[0])<<24 | uint32(x[1])<<16 | uint32(x[2])<<8 | uint32(x[3])) -
		(uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]))
	return int(off / 4), true
}

// Recover re-attaches the network of a sandbox that outlived an agent
// restart: it re-applies spec and restarts the resolver. A sandbox whose
// namespace is gone gets ErrNotFound (create it again).
func (m *Manager) Recover(ctx context.Context, id string, spec Spec) (*Sandbox, error) {
	if err := spec.Validate(); err != nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "network: %v", err)
	}
	slot, ok := m.slotOf(ctx, id)
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "network namespace of sandbox %s", id)
	}
	m.mu.Lock()
	if _, dup := m.byID[id]; dup {
		m.mu.Unlock()
		return nil, tartarus.Errorf(tartarus.ErrAlreadyExists, "network of sandbox %s", id)
	}
	if other, used := m.slots[slot]; used {
		m.mu.Unlock()
		return nil, fmt.Errorf("recover network of sandbox %s: slot %d is held by %s", id, slot, other.ID)
	}
	sb := m.newSandbox(id, slot, spec)
	m.byID[id], m.slots[slot] = sb, sb
	m.mu.Unlock()
	err := func() error {
		if err := nft(ctx, m.uplink, sandboxScript(slot, sb.sbAddr, m.cfg.LogGroup, spec.Policy, sb.admitted, m.clock.Now())); err != nil {
			return err
		}
		if err := m.shape(ctx, sb, spec); err != nil {
			return err
		}
		dns, err := startResolver(m, sb)
		sb.dns = dns
		return err
	}()
	if err != nil {
		m.mu.Lock()
		delete(m.byID, id)
		delete(m.slots, slot)
		m.mu.Unlock()
		return nil, fmt.Errorf("recover network of sandbox %s: %w", id, err)
	}
	m.metrics.sandboxes.Inc()
	return sb, nil
}

// Reconcile removes every namespace, veth and nft object of ours that no
// sandbox in keep owns, and returns the ids it removed. Run it on recovery
// after a crash, with the ids of the sandboxes still alive.
func (m *Manager) Reconcile(ctx context.Context, keep map[string]bool) ([]string, error) {
	var errs []error
	var removed []string
	keptSlots := map[int]bool{}
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reconcile networks: %w", err)
	}
	for _, e := range entries {
		id, ok := strings.CutPrefix(e.Name(), m.cfg.NetnsPrefix)
		if !ok {
			continue
		}
		if keep[id] {
			if s, ok := m.slotOf(ctx, id); ok {
				keptSlots[s] = true
			}
			continue
		}
		if err := m.Destroy(ctx, id); err != nil {
			errs = append(errs, err)
		}
		removed = append(removed, id)
	}
	m.mu.Lock()
	for s := range m.slots {
		keptSlots[s] = true
	}
	m.mu.Unlock()
	// Leftovers whose namespace is already gone: veths and chains by slot.
	slots, err := m.uplinkSlots(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for s := range slots {
		if !keptSlots[s] {
			if err := m.removeSlot(ctx, s); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return removed, errors.Join(errs...)
}

// uplinkSlots lists the slots that have a veth or a chain in the uplink.
func (m *Manager) uplinkSlots(ctx context.Context) (map[int]bool, error) {
	slots := map[int]bool{}
	out, err := run(ctx, "", "ip", nsArgs(m.cfg.UplinkNetns, "-o", "link", "show")...)
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		var s int
		if _, err := fmt.Sscanf(name, "ttv%d", &s); err == nil && name == hostVeth(s) {
			slots[s] = true
		}
	}
	var listing []byte
	err = Do(m.uplink, func() error {
		var err error
		listing, err = run(ctx, "", "nft", "list", "table", "inet", "tartarus")
		return err
	})
	if err != nil {
		return slots, err
	}
	for _, line := range strings.Split(string(listing), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || (f[0] != "chain" && f[0] != "set") {
			continue
		}
		var s int
		if _, err := fmt.Sscanf(f[1], "sb%d", &s); err == nil {
			slots[s] = true
		}
	}
	return slots, nil
}

// Network returns the namespace path and TAP device of sandbox id, for a
// runtime that starts the VMM inside it; ok is false when id has none.
func (m *Manager) Network(id string) (netnsPath, tap string, ok bool) {
	sb, err := m.Get(id)
	if err != nil {
		return "", "", false
	}
	return sb.Netns, sb.Tap, true
}

// DialGuest opens a TCP connection to port on sandbox id's guest, from
// inside the sandbox's namespace: the seam for exposed ports (the agent
// proxies HTTP and WebSocket requests for a guest port over it). Only the
// agent can do this; nothing on the uplink reaches a guest.
func (m *Manager) DialGuest(ctx context.Context, id string, port uint16) (net.Conn, error) {
	if port == 0 {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "guest port 0")
	}
	sb, err := m.Get(id)
	if err != nil {
		return nil, err
	}
	var c net.Conn
	err = Do(sb.Netns, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp4", netip.AddrPortFrom(GuestAddr, port).String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial guest port %d of sandbox %s: %w", port, id, err)
	}
	return c, nil
}
