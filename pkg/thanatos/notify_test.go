package thanatos

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// receiver is a callback endpoint on loopback that fails its first n
// requests.
type receiver struct {
	srv   *httptest.Server
	mu    sync.Mutex
	fails int
	got   []received
	seen  chan struct{}
}

type received struct {
	body []byte
	sig  string
	path string
}

func newReceiver(t *testing.T, fails int) *receiver {
	r := &receiver{fails: fails, seen: make(chan struct{}, 32)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.got = append(r.got, received{body, req.Header.Get(SignatureHeader), req.URL.Path})
		fail := len(r.got) <= r.fails
		r.mu.Unlock()
		if fail {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		r.seen <- struct{}{}
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) requests() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.got...)
}

var tenantKey = []byte("acme-secret")

func callbackConfig(c *Config) {
	c.AllowHosts = []string{"127.0.0.1"}
	c.CallbackKey = func(tenant string) ([]byte, error) {
		if tenant != "acme" {
			return nil, errors.New("no key")
		}
		return tenantKey, nil
	}
	c.Retry = RetryPolicy{First: time.Second, Max: 4 * time.Second}
}

// A callback endpoint that is down delays nothing and is retried with
// backoff on the clock until it answers.
func TestCallbackRetriedWithoutDelayingTheTermination(t *testing.T) {
	rcv := newReceiver(t, 3)
	h := newHarness(t, nil, callbackConfig)
	if _, err := h.m.InitiateShutdown(ctxT(t), "sb-1", &tartarus.ShutdownOptions{Tenant: "acme", CallbackURL: rcv.srv.URL + "/done"}); err != nil {
		t.Fatal(err)
	}
	st := wait(t, h.m, "sb-1") // final before any retry: the clock has not moved
	if st.Phase != tartarus.PhaseCompleted || !st.FinishedAt.Equal(t0) {
		t.Fatalf("final %+v", st)
	}
	<-rcv.seen
	// Backoffs 1 s, 2 s, 4 s: nothing is sent before each is due.
	for _, d := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		waitTickers(t, h.clk, 1)
		h.clk.Advance(d - time.Millisecond)
		select {
		case <-rcv.seen:
			t.Fatalf("retried before its backoff of %v", d)
		case <-time.After(20 * time.Millisecond):
		}
		h.clk.Advance(time.Millisecond)
		<-rcv.seen
	}
	got := rcv.requests()
	if len(got) != 4 {
		t.Fatalf("%d requests, want 4", len(got))
	}
	for _, r := range got {
		if err := VerifySignature(tenantKey, r.body, r.sig, h.clk.Now(), 5*time.Minute); err != nil {
			t.Errorf("signature %q: %v", r.sig, err)
		}
		var sent tartarus.TerminationStatus
		if err := json.Unmarshal(r.body, &sent); err != nil || sent.SandboxID != "sb-1" || sent.Phase != tartarus.PhaseCompleted || r.path != "/done" {
			t.Errorf("body %s, %v", r.body, err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(h.m.Collector().callbacks.WithLabelValues("delivered")) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("callback not counted as delivered")
		}
		time.Sleep(time.Millisecond)
	}
}

// Without the allowlist, a callback to loopback is refused and never sent.
func TestCallbackToLoopbackRefused(t *testing.T) {
	rcv := newReceiver(t, 0)
	h := newHarness(t, nil, func(c *Config) {
		callbackConfig(c)
		c.AllowHosts = nil
	})
	if _, err := h.m.InitiateShutdown(ctxT(t), "sb-1", &tartarus.ShutdownOptions{Tenant: "acme", CallbackURL: rcv.srv.URL}); err != nil {
		t.Fatal(err)
	}
	wait(t, h.m, "sb-1")
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(h.m.Collector().callbacks.WithLabelValues("failed")) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("refused callback not counted as failed")
		}
		time.Sleep(time.Millisecond)
	}
	if n := len(rcv.requests()); n != 0 {
		t.Errorf("%d requests reached a loopback endpoint that is not allowlisted", n)
	}
}

func TestWebhooksAreSignedAndCut(t *testing.T) {
	rcv := newReceiver(t, 0)
	hang := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-hang }))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(hang) })
	key := []byte("operator")
	h := newHarness(t, nil, func(c *Config) {
		c.AllowHosts = []string{"127.0.0.0/8"}
		c.WebhookKey = key
		c.Webhooks = []Webhook{
			{URL: slow.URL, When: WebhookPreMortem, Budget: 5 * time.Second},
			{URL: rcv.srv.URL + "/pre", When: WebhookPreMortem},
			{URL: rcv.srv.URL + "/post", When: WebhookPostMortem},
		}
	})
	if _, err := h.m.InitiateShutdown(ctxT(t), "sb-1", &tartarus.ShutdownOptions{Reason: tartarus.ReasonPolicyViolation}); err != nil {
		t.Fatal(err)
	}
	waitTickers(t, h.clk, 1)
	h.clk.Advance(5 * time.Second) // the hanging webhook's budget
	st := wait(t, h.m, "sb-1")
	if at, _ := h.target.callAt("kill"); !at.Equal(t0.Add(5 * time.Second)) {
		t.Errorf("killed at %v, want after the hanging webhook's budget", at)
	}
	<-rcv.seen
	<-rcv.seen
	got := rcv.requests()
	if len(got) != 2 || got[0].path != "/pre" || got[1].path != "/post" {
		t.Fatalf("webhook requests %+v", got)
	}
	for _, r := range got {
		if err := VerifySignature(key, r.body, r.sig, h.clk.Now(), time.Minute); err != nil {
			t.Errorf("signature: %v", err)
		}
	}
	var post struct {
		Event       WebhookWhen
		Termination tartarus.TerminationStatus
	}
	if err := json.Unmarshal(got[1].body, &post); err != nil || post.Event != WebhookPostMortem || post.Termination.Phase != st.Phase {
		t.Errorf("post-mortem webhook body %s", got[1].body)
	}
	if n := testutil.ToFloat64(h.m.Collector().hookFailures.WithLabelValues("pre_mortem_webhook", slow.URL)); n != 1 {
		t.Errorf("hanging webhook failures %v", n)
	}
}

func TestVerifySignature(t *testing.T) {
	key, body := []byte("k"), []byte(`{"a":1}`)
	now := time.Unix(1_800_000_000, 0)
	good := Sign(key, body, now)
	tests := []struct {
		name   string
		key    []byte
		body   []byte
		header string
		ok     bool
	}{
		{"good", key, body, good, true},
		{"good among rotated", key, body, "t=1800000000,v1=00ff," + strings.TrimPrefix(good, "t=1800000000,"), true},
		{"other key", []byte("x"), body, good, false},
		{"changed body", key, []byte(`{"a":2}`), good, false},
		{"too old", key, body, Sign(key, body, now.Add(-10*time.Minute)), false},
		{"garbage", key, body, "nonsense", false},
		{"no v1", key, body, "t=1800000000", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := VerifySignature(tc.key, tc.body, tc.header, now, 5*time.Minute)
			if (err == nil) != tc.ok {
				t.Errorf("VerifySignature = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

type fakeResolver map[string][]netip.Addr

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := f[host]; ok {
		return a, nil
	}
	return nil, errors.New("no such host")
}

func TestAddressGuard(t *testing.T) {
	addrs := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, a := range s {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
	res := fakeResolver{
		"public.test":   addrs("203.0.113.7"),
		"rebind.test":   addrs("203.0.113.7", "10.0.0.1"),
		"metadata.test": addrs("169.254.169.254"),
		"allowed.test":  addrs("192.168.1.5"),
	}
	tests := []struct {
		host  string
		allow []string
		want  string // "" = allowed
	}{
		{"203.0.113.7", nil, ""},
		{"public.test", nil, ""},
		{"127.0.0.1", nil, "loopback"},
		{"::1", nil, "loopback"},
		{"10.1.2.3", nil, "private"},
		{"172.16.0.1", nil, "private"},
		{"192.168.0.1", nil, "private"},
		{"fd00::1", nil, "private"},
		{"100.64.0.1", nil, "private"},
		{"169.254.169.254", nil, "link-local"},
		{"metadata.test", nil, "link-local"},
		{"fe80::1", nil, "link-local"},
		{"0.0.0.0", nil, "not a unicast"},
		{"239.1.2.3", nil, "not a unicast"},
		{"::ffff:127.0.0.1", nil, "loopback"},
		{"rebind.test", nil, "private"},
		{"198.51.100.9", nil, "this host's"},
		{"nowhere.test", nil, "resolve"},
		{"127.0.0.1", []string{"127.0.0.1"}, ""},
		{"10.1.2.3", []string{"10.0.0.0/8"}, ""},
		{"allowed.test", []string{"allowed.test"}, ""},
		{"allowed.test", []string{"other.test"}, "private"},
	}
	for _, tc := range tests {
		t.Run(tc.host+"/"+strings.Join(tc.allow, ","), func(t *testing.T) {
			g, err := newAddressGuard(tc.allow, res)
			if err != nil {
				t.Fatal(err)
			}
			g.own = func() ([]netip.Addr, error) { return addrs("198.51.100.9"), nil }
			_, err = g.resolve(context.Background(), tc.host)
			if tc.want == "" {
				if err != nil {
					t.Errorf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err %v, want %q", err, tc.want)
			}
			if strings.Contains(tc.want, "resolve") {
				return
			}
			if !errors.Is(err, tartarus.ErrPermissionDenied) {
				t.Errorf("err %v is not ErrPermissionDenied", err)
			}
		})
	}
}
