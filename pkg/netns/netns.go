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
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

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

// GuestNetnsSuffix ends the name of a sandbox's guest namespace (see
// Spec.GuestNetns): NetnsName(id) + GuestNetnsSuffix. No sandbox id holds
// an "@", so the name cannot be another sandbox's namespace.
const GuestNetnsSuffix = "@g"

// guestVeth is the guest end of the veth pair that stands in for the TAP
// device when the guest is a namespace (Spec.GuestNetns).
const guestVeth = "eth0"

// DefaultNetnsPrefix names our namespaces: prefix + sandbox id.
const DefaultNetnsPrefix = "tt-"

var validID = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// Sandbox is one sandbox's network as the Manager holds it.
type Sandbox struct {
	ID string
	// Netns is the namespace's path; the VMM is started inside it.
	Netns string
	// Tap is the TAP device's name inside Netns. With Spec.GuestNetns it
	// is a veth whose other end is the guest's eth0.
	Tap string
	// GuestNetns is the path of the guest namespace (Spec.GuestNetns):
	// what a container joins. Empty for a TAP.
	GuestNetns string

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
	sb := &Sandbox{
		ID: id, Netns: Path(m.NetnsName(id)), Tap: TapName,
		slot: slot, hostAddr: host, sbAddr: host.Next(),
		spec: spec, admitted: map[netip.Addr]time.Time{}, admittedName: map[netip.Addr]string{},
		log: newRing(m.cfg.LogSize),
	}
	if spec.GuestNetns {
		sb.GuestNetns = Path(m.guestNetnsName(id))
	}
	return sb
}

// guestNetnsName is the `ip netns` name of a sandbox's guest namespace.
func (m *Manager) guestNetnsName(id string) string { return m.NetnsName(id) + GuestNetnsSuffix }

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
	if owner := cmp.Or(sb.spec.TapOwner, m.cfg.TapUser); owner != "" {
		tapUser = " user " + owner
	}
	// The guest's device: a TAP for a VMM, or a veth into the guest
	// namespace under the TAP's name, so every rule below holds as is.
	guestDev := fmt.Sprintf("tuntap add dev %s mode tap%s", TapName, tapUser)
	if sb.GuestNetns != "" {
		if _, err := run(ctx, "", "ip", "netns", "add", m.guestNetnsName(sb.ID)); err != nil {
			return err
		}
		guestDev = fmt.Sprintf("link add %s type veth peer name %s netns %s", TapName, guestVeth, m.guestNetnsName(sb.ID))
	}
	sbBatch := fmt.Sprintf(`link set lo up
addr add %s/30 dev %s
link set %s up
route add default via %s
%s
link set %s address 52:54:00:1d:00:01
addr add %s/30 dev %s
link set %s up
`, sb.sbAddr, sandboxVeth, sandboxVeth, sb.hostAddr, guestDev, TapName, GatewayAddr, TapName, TapName)
	if _, err := run(ctx, sbBatch, "ip", "-n", ns, "-batch", "-"); err != nil {
		return err
	}
	if sb.GuestNetns != "" {
		if err := m.configureGuest(ctx, sb); err != nil {
			return err
		}
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

// configureGuest makes the guest namespace look as a microVM guest's
// network does once its agent has configured it.
func (m *Manager) configureGuest(ctx context.Context, sb *Sandbox) error {
	batch := fmt.Sprintf(`link set lo up
link set %s address %s
addr add %s/%d dev %s
link set %s up
route add default via %s
`, guestVeth, GuestMAC, GuestAddr, GuestPrefix.Bits(), guestVeth, guestVeth, GatewayAddr)
	if _, err := run(ctx, batch, "ip", "-n", m.guestNetnsName(sb.ID), "-batch", "-"); err != nil {
		return err
	}
	for _, key := range []string{"net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"} {
		if err := writeSysctl(sb.GuestNetns, key, "1"); err != nil {
			return err
		}
	}
	return nil
}

// AttachGuest moves sandbox id's guest network into the network namespace
// of process pid, which becomes the guest namespace (Sandbox.GuestNetns
// names it from then on): for a container whose runtime must create its
// network namespace itself, as runc does for a container in a user
// namespace (a process there may not join a namespace the host owns).
// The guest's veth pair is made anew into it, so a restarted container
// gets its network back the same way.
func (m *Manager) AttachGuest(ctx context.Context, id string, pid int) error {
	sb, err := m.Get(id)
	if err != nil {
		return err
	}
	if sb.GuestNetns == "" {
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "network of sandbox %s has no guest namespace", id)
	}
	if pid <= 0 {
		return tartarus.Errorf(tartarus.ErrInvalid, "attach network of sandbox %s: pid %d", id, pid)
	}
	ns, g := m.NetnsName(id), m.guestNetnsName(id)
	err = func() error {
		// The old pair goes first (its guest end with it, wherever it is).
		if _, err := run(ctx, "", "ip", "-n", ns, "link", "del", TapName); err != nil && !isNoSuch(err) {
			return err
		}
		if err := deleteNetns(ctx, g); err != nil {
			return err
		}
		if _, err := run(ctx, "", "ip", "netns", "attach", g, strconv.Itoa(pid)); err != nil {
			return err
		}
		batch := fmt.Sprintf(`link add %s type veth peer name %s netns %s
link set %s address 52:54:00:1d:00:01
addr add %s/30 dev %s
link set %s up
`, TapName, guestVeth, g, TapName, GatewayAddr, TapName, TapName)
		if _, err := run(ctx, batch, "ip", "-n", ns, "-batch", "-"); err != nil {
			return err
		}
		return m.configureGuest(ctx, sb)
	}()
	if err != nil {
		return fmt.Errorf("attach network of sandbox %s to pid %d: %w", id, pid, err)
	}
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
	// The guest namespace first: its end of the veth goes with it.
	errs = append(errs, deleteNetns(ctx, m.guestNetnsName(id)), deleteNetns(ctx, m.NetnsName(id)))
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
