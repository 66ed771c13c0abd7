package netns

import (
	"encoding/binary"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Record is one connection attempt from a sandbox.
type Record struct {
	Time    time.Time  `json:"time"`
	Dst     netip.Addr `json:"dst"`
	Port    uint16     `json:"port,omitempty"`
	Proto   string     `json:"proto"` // tcp, udp, icmp or a number
	Allowed bool       `json:"allowed"`
	// Rule is what decided: allow<i>, deny<i> (index into the policy's
	// lists), domain (a name the resolver admitted), dns (DNS to another
	// server than the sandbox's resolver), refused (always refused),
	// default (the mode's default) or, for lookups, dns-query.
	Rule string `json:"rule"`
	// Name is the looked-up name for resolver records.
	Name string `json:"name,omitempty"`
	// SrcPort is the guest's side of the connection (NATed by the host).
	SrcPort uint16 `json:"src_port,omitempty"`
	// BytesOut and BytesIn are filled in when the connection ends (IP
	// bytes as conntrack counts them); zero while it is open.
	BytesOut uint64 `json:"bytes_out,omitempty"`
	BytesIn  uint64 `json:"bytes_in,omitempty"`
}

// ring keeps the newest records of one sandbox.
type ring struct {
	mu    sync.Mutex
	buf   []Record
	next  int
	full  bool
	total uint64
}

func newRing(n int) *ring { return &ring{buf: make([]Record, n)} }

func (r *ring) add(rec Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf[r.next] = rec
	r.next = (r.next + 1) % len(r.buf)
	r.full = r.full || r.next == 0
	r.total++
}

// fill puts a finished connection's byte counts into its record, the
// newest one with the same destination and ports.
func (r *ring) fill(fe flowEnd, proto string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := 1; i <= len(r.buf); i++ {
		j := (r.next - i + len(r.buf)) % len(r.buf)
		if !r.full && j >= r.next {
			return false
		}
		rec := &r.buf[j]
		if rec.Dst == fe.dst && rec.Port == fe.dport && rec.SrcPort == fe.sport && rec.Proto == proto {
			rec.BytesOut, rec.BytesIn = fe.bytesOut, fe.bytesIn
			return true
		}
	}
	return false
}

// records returns the kept records, oldest first, and how many were ever
// added (so a reader can tell what the ring dropped).
func (r *ring) records() ([]Record, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Record
	if r.full {
		out = append(out, r.buf[r.next:]...)
	}
	out = append(out, r.buf[:r.next]...)
	return out, r.total
}

// Log returns the sandbox's connection log, oldest first, and how many
// records were ever written (more than len when the ring overflowed).
func (m *Manager) Log(id string) ([]Record, uint64, error) {
	sb, err := m.Get(id)
	if err != nil {
		return nil, 0, err
	}
	recs, total := sb.log.records()
	return recs, total, nil
}

// onLog files an NFLOG record under the sandbox its prefix names.
func (m *Manager) onLog(prefix string, payload []byte) {
	rest, ok := strings.CutPrefix(prefix, "tt")
	if !ok {
		return
	}
	slotStr, tag, ok := strings.Cut(strings.TrimSpace(rest), " ")
	slot, err := strconv.Atoi(slotStr)
	if !ok || err != nil {
		return
	}
	rec, ok := parseIPv4(payload)
	if !ok {
		return
	}
	m.mu.Lock()
	sb := m.slots[slot]
	m.mu.Unlock()
	if sb == nil {
		return
	}
	rec.Time = m.clock.Now()
	rec.Rule = tag
	switch {
	case tag == "default":
		mode := sb.Spec().Policy.Mode
		rec.Allowed = mode == ModeOpen || mode == ModeMonitored
	default:
		rec.Allowed = strings.HasPrefix(tag, "allow") || tag == "domain"
	}
	sb.log.add(rec)
	m.metrics.connection(rec.Allowed, tag)
}

// parseIPv4 reads destination, protocol and port from a logged packet.
func parseIPv4(p []byte) (Record, bool) {
	if len(p) < 20 || p[0]>>4 != 4 {
		return Record{}, false
	}
	ihl := int(p[0]&0x0f) * 4
	if ihl < 20 || len(p) < ihl {
		return Record{}, false
	}
	rec := Record{Dst: netip.AddrFrom4([4]byte(p[16:20]))}
	rec.Proto = protoName(p[9])
	if (p[9] == 6 || p[9] == 17) && len(p) >= ihl+4 {
		rec.SrcPort = binary.BigEndian.Uint16(p[ihl : ihl+2])
		rec.Port = binary.BigEndian.Uint16(p[ihl+2 : ihl+4])
	}
	return rec, true
}

func protoName(n uint8) string {
	switch n {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 1:
		return "icmp"
	}
	return strconv.Itoa(int(n))
}

// onFlowEnd files a finished connection's bytes under the sandbox whose
// transit address opened it.
func (m *Manager) onFlowEnd(fe flowEnd) {
	slot, ok := m.slotOfAddr(fe.src)
	if !ok {
		return
	}
	m.mu.Lock()
	sb := m.slots[slot]
	m.mu.Unlock()
	if sb == nil || sb.sbAddr != fe.src {
		return
	}
	sb.log.fill(fe, protoName(fe.proto))
}

type metrics struct {
	sandboxes   prometheus.Gauge
	connections *prometheus.CounterVec // verdict, rule kind
	dns         *prometheus.CounterVec // result
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		sandboxes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tartarus_network_sandboxes", Help: "Sandbox networks on this node.",
		}),
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tartarus_network_connections_total",
			Help: "Logged connection attempts from sandboxes, by verdict and deciding rule kind.",
		}, []string{"verdict", "rule"}),
		dns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tartarus_network_dns_queries_total",
			Help: "Queries to the sandbox resolvers, by result.",
		}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.sandboxes, m.connections, m.dns)
	}
	return m
}

func (m *metrics) connection(allowed bool, tag string) {
	verdict := "denied"
	if allowed {
		verdict = "allowed"
	}
	kind := strings.TrimRight(tag, "0123456789")
	m.connections.WithLabelValues(verdict, kind).Inc()
}
