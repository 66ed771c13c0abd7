package netns_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/netns"
	"github.com/tartarus-sandbox/tartarus/pkg/netns/netnstest"
)

// BenchmarkCreateDestroy is the cost networking adds to a sandbox's life.
func BenchmarkCreateDestroy(b *testing.B) {
	_, m := setupB(b)
	ctx := context.Background()
	spec := netns.Spec{Policy: netns.Policy{Mode: netns.ModeOpen}}
	for i := 0; b.Loop(); i++ {
		id := fmt.Sprintf("b%d", i)
		if _, err := m.Create(ctx, id, spec); err != nil {
			b.Fatal(err)
		}
		if err := m.Destroy(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPolicyEnforced is the time from Update returning-plus-call to a
// new connection seeing the new policy (open → deny the target → open).
func BenchmarkPolicyEnforced(b *testing.B) {
	_, m := setupB(b)
	ctx := context.Background()
	sb, err := m.Create(ctx, "pol", netns.Spec{Policy: netns.Policy{Mode: netns.ModeOpen}})
	if err != nil {
		b.Fatal(err)
	}
	target := netnstest.HTTPAddr.String() + ":80"
	deny, _ := netns.ParseRule("tcp:" + target)
	closed := netns.Spec{Policy: netns.Policy{Mode: netns.ModeOpen, Deny: []netns.Rule{deny}}}
	open := netns.Spec{Policy: netns.Policy{Mode: netns.ModeOpen}}
	for b.Loop() {
		for _, st := range []struct {
			spec netns.Spec
			ok   bool
		}{{closed, false}, {open, true}} {
			if err := m.Update(ctx, "pol", st.spec); err != nil {
				b.Fatal(err)
			}
			for (dial(sb, target) == nil) != st.ok {
				time.Sleep(time.Millisecond)
			}
		}
	}
}

// BenchmarkPolicyEnforced1000Rules is BenchmarkPolicyEnforced with 1,000
// more rules in both policies: the cost of rewriting a large policy.
func BenchmarkPolicyEnforced1000Rules(b *testing.B) {
	_, m := setupB(b)
	ctx := context.Background()
	var many []netns.Rule
	for i := range 1000 {
		r, err := netns.ParseRule(fmt.Sprintf("tcp:198.18.%d.%d:%d", i/250, i%250, 1000+i))
		if err != nil {
			b.Fatal(err)
		}
		many = append(many, r)
	}
	open := netns.Spec{Policy: netns.Policy{Mode: netns.ModeOpen, Deny: many}}
	sb, err := m.Create(ctx, "pol", open)
	if err != nil {
		b.Fatal(err)
	}
	target := netnstest.HTTPAddr.String() + ":80"
	deny, _ := netns.ParseRule("tcp:" + target)
	closed := netns.Spec{Policy: netns.Policy{Mode: netns.ModeOpen, Deny: append([]netns.Rule{deny}, many...)}}
	for b.Loop() {
		for _, st := range []struct {
			spec netns.Spec
			ok   bool
		}{{closed, false}, {open, true}} {
			if err := m.Update(ctx, "pol", st.spec); err != nil {
				b.Fatal(err)
			}
			for (dial(sb, target) == nil) != st.ok {
				time.Sleep(time.Millisecond)
			}
		}
	}
}

// BenchmarkThroughput1000Rules downloads /big through a policy of 1,000
// deny rules that do not match (the worst case: every new connection walks
// them all); b.SetBytes makes it MB/s. BenchmarkConnect1000Rules is the
// connection rate.
func BenchmarkThroughput1000Rules(b *testing.B) {
	in, m := setupB(b)
	sb := manyRules(b, m)
	b.SetBytes(netnstest.BigSize)
	for b.Loop() {
		if _, err := get(sb, in, "http://"+netnstest.HTTPAddr.String()+"/big"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkConnect1000Rules(b *testing.B) {
	_, m := setupB(b)
	sb := manyRules(b, m)
	target := netnstest.HTTPAddr.String() + ":80"
	for b.Loop() {
		if err := dial(sb, target); err != nil {
			b.Fatal(err)
		}
	}
}

func manyRules(b *testing.B, m *netns.Manager) *netns.Sandbox {
	var deny []netns.Rule
	for i := range 1000 {
		r, err := netns.ParseRule(fmt.Sprintf("tcp:198.18.%d.%d:%d", i/250, i%250, 1000+i))
		if err != nil {
			b.Fatal(err)
		}
		deny = append(deny, r)
	}
	sb, err := m.Create(context.Background(), "many", netns.Spec{Policy: netns.Policy{Mode: netns.ModeMonitored, Deny: deny}})
	if err != nil {
		b.Fatal(err)
	}
	return sb
}

func dial(sb *netns.Sandbox, addr string) error {
	return netns.Do(sb.Netns, func() error {
		c, err := net.DialTimeout("tcp4", addr, time.Second)
		if err != nil {
			return err
		}
		_, _ = io.WriteString(c, "GET /hello HTTP/1.0\r\n\r\n")
		_, _ = io.Copy(io.Discard, c)
		return c.Close()
	})
}

func setupB(b *testing.B) (*netnstest.Internet, *netns.Manager) {
	in := netnstest.New(b)
	m, err := netns.New(context.Background(), netns.Config{UplinkNetns: in.Uplink, DNSUpstream: in.DNS, NetnsPrefix: "txb-"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_, _ = m.Reconcile(context.Background(), nil)
		m.Close()
	})
	return in, m
}
