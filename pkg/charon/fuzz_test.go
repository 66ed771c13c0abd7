package charon

import (
	"net/http"
	"strings"
	"testing"
)

// FuzzDecodeShore feeds the admin API's parser: it must never panic, and
// whatever it accepts must either register cleanly or be refused with
// ErrInvalid, never half-registered.
func FuzzDecodeShore(f *testing.F) {
	for _, s := range []string{
		`{"id":"a","address":"http://127.0.0.1:1"}`,
		`{"id":"x","address":"http://h:1","weight":3,"zone":"eu","priority":1,"metadata":{"k":"v"}}`,
		`{"id":"x","address":"http://h:1","health_check":{"path":"/healthz","interval":"1s","timeout":"200ms","healthy":2,"unhealthy":3}}`,
		`{"id":"x","address":"http://h:1","health_check":{"interval":1000000000}}`,
		`{"id":`, `{}`, `[]`, `null`, `{"id":"a b","address":"ftp://h"}`, `{"id":"x","address":"http://h:1/p?q#f"}`,
	} {
		f.Add(s)
	}
	ferry, err := New(Options{Config: quietConfig()})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { ferry.Close() })
	f.Fuzz(func(t *testing.T, body string) {
		s, err := decodeShore(strings.NewReader(body))
		if err != nil {
			return
		}
		before := len(ferry.Shores())
		if _, verr := validateShore(s); verr != nil {
			if err := ferry.RegisterShore(s); err == nil || len(ferry.Shores()) != before {
				t.Fatalf("shore %+v does not validate (%v) but registering it gave %v", s, verr, err)
			}
			return
		}
		// Registered shores are never probed: a fuzzed address may name
		// any host, and tests talk to loopback only.
		s.HealthCheck = &HealthCheck{Interval: -1}
		if err := ferry.RegisterShore(s); err != nil {
			if len(ferry.Shores()) != before {
				t.Fatalf("refused shore %+v (%v) changed the shore list", s, err)
			}
			return
		}
		if err := ferry.DeregisterShore(s.ID); err != nil {
			t.Fatalf("registered %q but cannot remove it: %v", s.ID, err)
		}
	})
}

// FuzzParseShoreFlag: the --shore parser never panics and what it accepts
// validates.
func FuzzParseShoreFlag(f *testing.F) {
	for _, s := range []string{"http://127.0.0.1:7700", "http://h:1,id=o1,weight=3,zone=eu,priority=1", "h:1", "http://h:1,zone", ",,,", "http://[::1]:7700,weight=-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		s, err := ParseShoreFlag(v)
		if err != nil {
			return
		}
		if _, err := validateShore(s); err != nil {
			t.Fatalf("accepted %q but it does not validate: %v", v, err)
		}
	})
}

// FuzzLimitKey: keys are bounded and never contain a credential.
func FuzzLimitKey(f *testing.F) {
	f.Add("Bearer tk_aaaaaaaaaaaa_secret", "acme", "10.0.0.1:5")
	f.Add("", "", "[2001:db8::1]:1")
	f.Add("Basic dXNlcjpwYXNz", strings.Repeat("t", 300), "garbage")
	f.Fuzz(func(t *testing.T, auth, tenant, remote string) {
		r, _ := http.NewRequest("GET", "/", nil)
		r.RemoteAddr = remote
		r.Header.Set("Authorization", auth)
		r.Header.Set(TenantHeader, tenant)
		for _, mode := range []string{"ip", "identity", "tenant"} {
			for _, trust := range []bool{false, true} {
				k := limitKey(r, mode, trust)
				if len(k) > 200+len(remote) {
					t.Fatalf("key of %d bytes", len(k))
				}
				if len(auth) > 8 && strings.Contains(k, auth) {
					t.Fatalf("key %q contains the credential", k)
				}
			}
		}
	})
}
