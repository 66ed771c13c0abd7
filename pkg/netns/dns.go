package netns

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Admission bounds: a name's addresses stay in the sandbox's allowed set
// for the answer's TTL, but at least minAdmit (clients connect a moment
// after resolving, and TTL 0 answers exist) and at most maxAdmit.
const (
	minAdmit        = 60 * time.Second
	maxAdmit        = time.Hour
	dnsTimeout      = 3 * time.Second
	dnsMaxInflight  = 32
	dnsMaxMsg       = 4096
	dnsTCPIdleLimit = 10 * time.Second
)

// resolver is the DNS server a sandbox's guest must use. It listens on
// GatewayAddr:53 inside the sandbox namespace (so each socket belongs to
// exactly one sandbox), answers names the policy refuses with NXDOMAIN,
// forwards the rest upstream from the uplink namespace and, in restricted
// mode, admits the A records of the answer into the sandbox's nft set
// before the guest sees the answer.
type resolver struct {
	m    *Manager
	sb   *Sandbox
	udp  net.PacketConn
	tcp  net.Listener
	sem  chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

func startResolver(m *Manager, sb *Sandbox) (*resolver, error) {
	r := &resolver{m: m, sb: sb, sem: make(chan struct{}, dnsMaxInflight)}
	addr := netip.AddrPortFrom(GatewayAddr, 53).String()
	err := Do(sb.Netns, func() error {
		var err error
		if r.udp, err = net.ListenPacket("udp4", addr); err != nil {
			return err
		}
		r.tcp, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		if r.udp != nil {
			r.udp.Close()
		}
		return nil, fmt.Errorf("resolver of sandbox %s: %w", sb.ID, err)
	}
	r.wg.Add(2)
	go r.serveUDP()
	go r.serveTCP()
	return r, nil
}

func (r *resolver) close() {
	if r == nil {
		return
	}
	r.once.Do(func() {
		r.udp.Close()
		r.tcp.Close()
	})
	r.wg.Wait()
}

func (r *resolver) serveUDP() {
	defer r.wg.Done()
	for {
		buf := make([]byte, dnsMaxMsg)
		n, from, err := r.udp.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		select {
		case r.sem <- struct{}{}:
		default:
			r.m.metrics.dns.WithLabelValues("overload").Inc()
			continue // the guest is flooding; it will retry
		}
		r.wg.Add(1)
		go func() {
			defer func() { <-r.sem; r.wg.Done() }()
			if resp := r.answer(buf[:n], "udp"); resp != nil {
				_, _ = r.udp.WriteTo(resp, from)
			}
		}()
	}
}

func (r *resolver) serveTCP() {
	defer r.wg.Done()
	for {
		c, err := r.tcp.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		select {
		case r.sem <- struct{}{}:
		default:
			c.Close()
			continue
		}
		r.wg.Add(1)
		go func() {
			defer func() { <-r.sem; r.wg.Done(); c.Close() }()
			br := bufio.NewReader(c)
			for {
				_ = c.SetDeadline(time.Now().Add(dnsTCPIdleLimit))
				q, err := readTCPMsg(br)
				if err != nil {
					return
				}
				resp := r.answer(q, "tcp")
				if resp == nil {
					return
				}
				if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(resp))), resp...)); err != nil {
					return
				}
			}
		}()
	}
}

func readTCPMsg(r io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint16(l[:])
	if n < 12 || n > dnsMaxMsg {
		return nil, fmt.Errorf("dns message of %d bytes", n)
	}
	b := make([]byte, n)
	_, err := io.ReadFull(r, b)
	return b, err
}

// answer decides one query from the guest; nil means drop it.
func (r *resolver) answer(q []byte, network string) []byte {
	var p dnsmessage.Parser
	hdr, err := p.Start(q)
	if err != nil || hdr.Response {
		r.m.metrics.dns.WithLabelValues("malformed").Inc()
		return nil
	}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) != 1 {
		r.m.metrics.dns.WithLabelValues("malformed").Inc()
		return reply(hdr, qs, dnsmessage.RCodeFormatError)
	}
	name := strings.ToLower(strings.TrimSuffix(qs[0].Name.String(), "."))
	pol := r.sb.Spec().Policy
	ok, rule := pol.domainVerdict(name)
	rec := Record{Time: r.m.clock.Now(), Dst: GatewayAddr, Proto: "dns", Port: 53, Rule: "dns-query:" + rule, Name: name, Allowed: ok}
	r.sb.log.add(rec)
	if !ok {
		r.m.metrics.dns.WithLabelValues("refused").Inc()
		return reply(hdr, qs, dnsmessage.RCodeNameError)
	}
	resp, err := r.forward(q, network)
	if err != nil {
		r.m.log.Debug("dns upstream", "sandbox", r.sb.ID, "name", name, "err", err)
		r.m.metrics.dns.WithLabelValues("upstream_error").Inc()
		return reply(hdr, qs, dnsmessage.RCodeServerFailure)
	}
	var rp dnsmessage.Parser
	rh, err := rp.Start(resp)
	if err != nil || rh.ID != hdr.ID || !rh.Response {
		r.m.metrics.dns.WithLabelValues("upstream_error").Inc()
		return reply(hdr, qs, dnsmessage.RCodeServerFailure)
	}
	if pol.Mode == ModeRestricted {
		addrs, ttl := answerAddrs(&rp)
		if len(addrs) > 0 {
			if err := r.admit(name, addrs, ttl); err != nil {
				r.m.log.Warn("dns admit", "sandbox", r.sb.ID, "name", name, "err", err)
				r.m.metrics.dns.WithLabelValues("admit_error").Inc()
				return reply(hdr, qs, dnsmessage.RCodeServerFailure)
			}
		}
	}
	r.m.metrics.dns.WithLabelValues("answered").Inc()
	return resp
}

// answerAddrs collects the A records of an answer and their smallest TTL.
func answerAddrs(p *dnsmessage.Parser) ([]netip.Addr, time.Duration) {
	if err := p.SkipAllQuestions(); err != nil {
		return nil, 0
	}
	var addrs []netip.Addr
	ttl := maxAdmit
	for len(addrs) < 64 {
		h, err := p.AnswerHeader()
		if err != nil {
			break
		}
		if h.Type != dnsmessage.TypeA || h.Class != dnsmessage.ClassINET {
			if p.SkipAnswer() != nil {
				break
			}
			continue
		}
		a, err := p.AResource()
		if err != nil {
			break
		}
		addrs = append(addrs, netip.AddrFrom4(a.A))
		ttl = min(ttl, time.Duration(h.TTL)*time.Second)
	}
	return addrs, max(ttl, minAdmit)
}

// admit puts addrs into the sandbox's domain set for ttl (once an update
// changes the policy, Update keeps only addresses of still-allowed names).
func (r *resolver) admit(name string, addrs []netip.Addr, ttl time.Duration) error {
	sb := r.sb
	sb.mu.Lock()
	defer sb.mu.Unlock()
	now := r.m.clock.Now()
	var fresh []netip.Addr
	for _, a := range addrs {
		// Re-admit only when less than half the new TTL is left: a busy
		// name must not cost an nft run per lookup.
		if exp, ok := sb.admitted[a]; ok && exp.Sub(now) > ttl/2 {
			continue
		}
		fresh = append(fresh, a)
	}
	if len(fresh) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), dnsTimeout)
	defer cancel()
	if err := nft(ctx, r.m.uplink, admitScript(sb.slot, fresh, ttl)); err != nil {
		return err
	}
	for _, a := range fresh {
		sb.admitted[a] = now.Add(ttl)
		sb.admittedName[a] = name
	}
	return nil
}

// forward sends q upstream from the uplink namespace.
func (r *resolver) forward(q []byte, network string) ([]byte, error) {
	var c net.Conn
	err := Do(r.m.uplink, func() error {
		var err error
		c, err = net.DialTimeout(network, r.m.cfg.DNSUpstream, dnsTimeout)
		return err
	})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(dnsTimeout))
	if network == "udp" {
		if _, err := c.Write(q); err != nil {
			return nil, err
		}
		buf := make([]byte, dnsMaxMsg)
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
	if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(q))), q...)); err != nil {
		return nil, err
	}
	return readTCPMsg(c)
}

// reply builds an answerless response with rcode.
func reply(q dnsmessage.Header, qs []dnsmessage.Question, rcode dnsmessage.RCode) []byte {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{
		ID: q.ID, Response: true, OpCode: q.OpCode, RecursionDesired: q.RecursionDesired,
		RecursionAvailable: true, RCode: rcode,
	})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil
	}
	for _, qq := range qs {
		if err := b.Question(qq); err != nil {
			return nil
		}
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

// resolvConfUpstream returns the first nameserver of a resolv.conf.
func resolvConfUpstream(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil && a.Is4() {
				return netip.AddrPortFrom(a, 53).String(), nil
			}
		}
	}
	return "", fmt.Errorf("%s: no IPv4 nameserver", path)
}
