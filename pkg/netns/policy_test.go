package netns

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var ruleCases = []struct {
	in      string
	want    string // String() of the parsed rule; "" when an error is wanted
	wantErr string
}{
	{in: "203.0.113.0/24", want: "203.0.113.0/24"},
	{in: "203.0.113.7", want: "203.0.113.7"},
	{in: "203.0.113.7:443", want: "203.0.113.7:443"},
	{in: "tcp:203.0.113.0/24:80-90", want: "tcp:203.0.113.0/24:80-90"},
	{in: "udp:*:53,5353", want: "udp:*:53,5353"},
	{in: "tcp:*:443", want: "tcp:*:443"},
	{in: "Example.COM.", want: "example.com"},
	{in: "*.example.com", want: "*.example.com"},
	{in: "", wantErr: "empty rule"},
	{in: "203.0.113.7/24", wantErr: "host bits"},
	{in: "2001:db8::/32", wantErr: "only IPv4"},
	{in: "tcp:example.com", wantErr: "no protocol or ports"},
	{in: "1.2.3.4:0", wantErr: "bad port"},
	{in: "1.2.3.4:70000", wantErr: "bad port"},
	{in: "1.2.3.4:90-80", wantErr: "empty"},
	{in: "exa mple.com", wantErr: "character"},
	{in: "*.", wantErr: "character"},
	{in: "a..b", wantErr: "empty label"},
	{in: "sctp:1.2.3.4", wantErr: "no protocol or ports"}, // read as a domain with a port
}

func TestParseRule(t *testing.T) {
	for _, c := range ruleCases {
		t.Run(c.in, func(t *testing.T) {
			r, err := ParseRule(c.in)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("ParseRule(%q) = %v, %v; want error containing %q", c.in, r, err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.String() != c.want {
				t.Fatalf("ParseRule(%q).String() = %q, want %q", c.in, r.String(), c.want)
			}
			// String is ParseRule's syntax.
			if r2, err := ParseRule(r.String()); err != nil || r2.String() != r.String() {
				t.Fatalf("round trip %q: %v %v", r.String(), r2, err)
			}
		})
	}
}

// FuzzParseRule: rules come from API bodies and the CLI; any input either
// fails or gives a rule that validates and renders to safe nft syntax.
func FuzzParseRule(f *testing.F) {
	for _, c := range ruleCases {
		f.Add(c.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRule(s)
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("ParseRule(%q) gave invalid rule: %v", s, err)
		}
		m := ruleMatch(r)
		if strings.ContainsAny(m, "\n;\"#") {
			t.Fatalf("ParseRule(%q) renders unsafe nft %q", s, m)
		}
	})
}

func TestPolicyValidate(t *testing.T) {
	cases := []struct {
		name    string
		p       Policy
		wantErr []string
	}{
		{"open", Policy{Mode: ModeOpen}, nil},
		{"bad mode", Policy{Mode: "wide"}, []string{"mode \"wide\""}},
		{"every problem", Policy{Mode: "x", Allow: []Rule{{}}, Deny: []Rule{{Domain: "a", CIDR: netip.MustParsePrefix("1.2.3.4/32")}}},
			[]string{"mode", "allow[0]", "deny[0]"}},
		{"too many", Policy{Mode: ModeOpen, Allow: make([]Rule, MaxRules+1)}, []string{"rules (at most"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.p.Validate()
			if len(c.wantErr) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestDomainVerdict(t *testing.T) {
	p := Policy{Mode: ModeRestricted,
		Allow: []Rule{{Domain: "example.com"}, {Domain: "*.cdn.example"}},
		Deny:  []Rule{{Domain: "bad.cdn.example"}}}
	cases := []struct {
		mode Mode
		name string
		want bool
	}{
		{ModeRestricted, "example.com", true},
		{ModeRestricted, "www.example.com", false},
		{ModeRestricted, "a.cdn.example", true},
		{ModeRestricted, "x.y.cdn.example", true},
		{ModeRestricted, "cdn.example", false},
		{ModeRestricted, "evilcdn.example", false},
		{ModeRestricted, "bad.cdn.example", false},
		{ModeOpen, "anything.test", true},
		{ModeOpen, "bad.cdn.example", false},
		{ModeNone, "example.com", false},
	}
	for _, c := range cases {
		p.Mode = c.mode
		if got, rule := p.domainVerdict(c.name); got != c.want {
			t.Errorf("%s %s: allowed=%v (%s), want %v", c.mode, c.name, got, rule, c.want)
		}
	}
}

func TestPolicyScript(t *testing.T) {
	now := time.Unix(1000, 0)
	p := Policy{Mode: ModeRestricted,
		Allow: []Rule{{Domain: "example.com"}, {CIDR: netip.MustParsePrefix("203.0.113.0/24"), Proto: "tcp", Ports: []PortRange{{443, 443}}}},
		Deny:  []Rule{{CIDR: netip.MustParsePrefix("203.0.113.66/32")}}}
	admitted := map[netip.Addr]time.Time{
		netip.MustParseAddr("198.51.100.7"): now.Add(90 * time.Second),
		netip.MustParseAddr("198.51.100.8"): now.Add(-time.Second), // expired: left out
	}
	s := policyScript(3, 7411, p, admitted, now)
	for _, want := range []string{
		"flush chain inet tartarus sb3p",
		"flush set inet tartarus sb3d",
		"th dport { 53, 853 } counter goto refuse",
		"ip daddr 203.0.113.66/32 counter goto refuse",
		"ip daddr 203.0.113.0/24 tcp dport { 443 } counter accept",
		`log prefix "tt3 allow1" group 7411`,
		"ip daddr @sb3d counter accept",
		"add element inet tartarus sb3d { 198.51.100.7 timeout 90s }",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("policy script lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "198.51.100.8") {
		t.Errorf("expired admission kept:\n%s", s)
	}
	// Deny before allow, and the default last.
	if d, a := strings.Index(s, "203.0.113.66"), strings.Index(s, "203.0.113.0/24"); d > a {
		t.Errorf("deny rule after allow rule:\n%s", s)
	}
}

func TestParseIPv4(t *testing.T) {
	pkt := make([]byte, 28)
	pkt[0] = 0x45
	pkt[9] = 6
	copy(pkt[16:20], []byte{203, 0, 113, 10})
	pkt[22], pkt[23] = 0x01, 0xbb
	rec, ok := parseIPv4(pkt)
	if !ok || rec.Dst.String() != "203.0.113.10" || rec.Port != 443 || rec.Proto != "tcp" {
		t.Fatalf("parseIPv4 = %+v %v", rec, ok)
	}
	for _, bad := range [][]byte{nil, pkt[:10], append([]byte{0x65}, pkt[1:]...), append([]byte{0x4f}, pkt[1:20]...)} {
		if _, ok := parseIPv4(bad); ok {
			t.Errorf("parseIPv4(%x) accepted", bad)
		}
	}
}

func TestRing(t *testing.T) {
	r := newRing(3)
	for i := range 5 {
		r.add(Record{Port: uint16(i)})
	}
	recs, total := r.records()
	if total != 5 || len(recs) != 3 || recs[0].Port != 2 || recs[2].Port != 4 {
		t.Fatalf("records = %+v total %d", recs, total)
	}
}

func TestPolicyJSON(t *testing.T) {
	in := `{"mode":"restricted","allow":["*.github.com","tcp:203.0.113.0/24:443"],"deny":["203.0.113.66"]}`
	var p Policy
	if err := json.Unmarshal([]byte(in), &p); err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil || len(p.Allow) != 2 || p.Allow[0].Domain != "*.github.com" || p.Deny[0].CIDR.Bits() != 32 {
		t.Fatalf("decoded %+v (%v)", p, err)
	}
	out, err := json.Marshal(p)
	if err != nil || string(out) != in {
		t.Fatalf("encoded %s (%v), want %s", out, err, in)
	}
	err = json.Unmarshal([]byte(`{"mode":"open","allow":["10.0.0.1/8"]}`), &p)
	if err == nil || !strings.Contains(err.Error(), "host bits") {
		t.Fatalf("bad rule in JSON: %v", err)
	}
}

func TestFlowEndFillsRecord(t *testing.T) {
	be16 := func(v uint16) []byte { return []byte{byte(v >> 8), byte(v)} }
	be64 := func(v uint64) []byte {
		b := make([]byte, 8)
		for i := range 8 {
			b[7-i] = byte(v >> (8 * i))
		}
		return b
	}
	cat := func(bs ...[]byte) []byte {
		var out []byte
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}
	msg := cat(
		nlAttr(ctaTupleOrig, cat(
			nlAttr(ctaTupleIP, cat(nlAttr(ctaIPv4Src, []byte{10, 229, 0, 6}), nlAttr(ctaIPv4Dst, []byte{203, 0, 113, 10}))),
			nlAttr(ctaTupleProto, cat(nlAttr(ctaProtoNum, []byte{6}), nlAttr(ctaProtoSrcPort, be16(40000)), nlAttr(ctaProtoDstPort, be16(80)))),
		)),
		nlAttr(ctaCountersOrig, nlAttr(ctaCountersBytes, be64(385))),
		nlAttr(ctaCountersReply, nlAttr(ctaCountersBytes, be64(1<<33))),
	)
	fe, ok := parseFlowEnd(msg)
	if !ok || fe.src.String() != "10.229.0.6" || fe.dst.String() != "203.0.113.10" || fe.sport != 40000 || fe.dport != 80 ||
		fe.proto != 6 || fe.bytesOut != 385 || fe.bytesIn != 1<<33 {
		t.Fatalf("parseFlowEnd = %+v %v", fe, ok)
	}
	r := newRing(4)
	r.add(Record{Dst: fe.dst, Port: 80, SrcPort: 40000, Proto: "tcp"})
	r.add(Record{Dst: fe.dst, Port: 80, SrcPort: 40001, Proto: "tcp"})
	if !r.fill(fe, "tcp") {
		t.Fatal("no record filled")
	}
	recs, _ := r.records()
	if recs[0].BytesIn != 1<<33 || recs[1].BytesIn != 0 {
		t.Fatalf("records = %+v", recs)
	}
	if _, ok := parseFlowEnd(msg[:7]); ok {
		t.Error("truncated message parsed")
	}
}
