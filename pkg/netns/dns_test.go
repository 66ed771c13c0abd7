package netns

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

// testResolver is a resolver whose upstream is never reached: every test
// here is answered (or dropped) before forwarding.
func testResolver(p Policy) *resolver {
	m := &Manager{metrics: newMetrics(nil), clock: clock.System{}, cfg: Config{DNSUpstream: "192.0.2.1:53"}}
	sb := &Sandbox{ID: "t", spec: Spec{Policy: p}, log: newRing(16),
		admitted: map[netip.Addr]time.Time{}, admittedName: map[netip.Addr]string{}}
	return &resolver{m: m, sb: sb}
}

func query(t testing.TB, name string) []byte {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, RecursionDesired: true})
	_ = b.StartQuestions()
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}); err != nil {
		t.Fatal(err)
	}
	q, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func TestResolverRefuses(t *testing.T) {
	cases := []struct {
		name string
		pol  Policy
		q    string
	}{
		{"none refuses all", Policy{Mode: ModeNone}, "example.com."},
		{"restricted refuses unlisted", Policy{Mode: ModeRestricted, Allow: []Rule{{Domain: "*.ok.example"}}}, "ok.example."},
		{"deny wins in open", Policy{Mode: ModeOpen, Deny: []Rule{{Domain: "bad.example"}}}, "BAD.example."},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := testResolver(c.pol)
			resp := r.answer(query(t, c.q), "udp")
			var p dnsmessage.Parser
			h, err := p.Start(resp)
			if err != nil || h.ID != 7 || !h.Response || h.RCode != dnsmessage.RCodeNameError {
				t.Fatalf("answer = %+v, %v; want NXDOMAIN for id 7", h, err)
			}
			recs, _ := r.sb.log.records()
			if len(recs) != 1 || recs[0].Allowed || recs[0].Name == "" {
				t.Errorf("log = %+v", recs)
			}
		})
	}
}

// FuzzResolver: whatever the guest sends, the resolver neither panics nor
// forwards anything in mode none, and answers only queries (never
// responses) with a message of its own id.
func FuzzResolver(f *testing.F) {
	f.Add(query(f, "example.com."))
	f.Add([]byte{0, 7, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, q []byte) {
		r := testResolver(Policy{Mode: ModeNone})
		resp := r.answer(q, "udp")
		if resp == nil {
			return
		}
		var p dnsmessage.Parser
		h, err := p.Start(resp)
		if err != nil || !h.Response || h.RCode == dnsmessage.RCodeSuccess {
			t.Fatalf("answer to %x = %x (%v)", q, resp, err)
		}
	})
}

// FuzzNFLOGAttrs: the attribute walker takes whatever netlink hands it.
func FuzzNFLOGAttrs(f *testing.F) {
	f.Add(append(nlAttr(nfulaPrefix, []byte("tt3 deny0\x00")), nlAttr(nfulaPayload, make([]byte, 28))...))
	f.Add([]byte{4, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 9, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, payload := nflogAttrs(b)
		_, _ = parseIPv4(payload)
		_, _ = parseFlowEnd(b)
	})
}
