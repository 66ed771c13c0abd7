package thanatos

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// SignatureHeader carries a callback's or webhook's signature:
//
//	Tartarus-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(key, "<t>.<body>")>
//
// A receiver recomputes the HMAC over the timestamp, a dot and the raw
// body with its key, compares in constant time, and refuses a timestamp
// too far from its own clock (replays); VerifySignature does all three.
const SignatureHeader = "Tartarus-Signature"

// Sign returns the SignatureHeader value for body sent at t.
func Sign(key, body []byte, t time.Time) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(key, ts, body))
}

func mac(key []byte, ts string, body []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(ts))
	h.Write([]byte("."))
	h.Write(body)
	return h.Sum(nil)
}

// VerifySignature checks a SignatureHeader value against body and key, and
// that its timestamp is within tolerance of now.
func VerifySignature(key, body []byte, header string, now time.Time, tolerance time.Duration) error {
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			continue
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			if b, err := hex.DecodeString(v); err == nil {
				sigs = append(sigs, b)
			}
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return errors.New("signature header: want t=<unix>,v1=<hex>")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("signature timestamp %s is %v from now", ts, d)
	}
	want := mac(key, ts, body)
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			return nil
		}
	}
	return errors.New("signature does not match")
}

// RetryPolicy says how a callback is retried: attempt n (from 1) waits
// First·2^(n-2), at most Max, after the one before; each attempt is cut at
// Timeout.
type RetryPolicy struct {
	Attempts int
	First    time.Duration
	Max      time.Duration
	Timeout  time.Duration
}

func (p RetryPolicy) validate() error {
	if p.Attempts < 0 || p.First < 0 || p.Max < 0 || p.Timeout < 0 {
		return errors.New("thanatos: Retry fields must not be negative")
	}
	return nil
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.Attempts == 0 {
		p.Attempts = 8
	}
	if p.First == 0 {
		p.First = time.Second
	}
	if p.Max == 0 {
		p.Max = 5 * time.Minute
	}
	if p.Timeout == 0 {
		p.Timeout = 10 * time.Second
	}
	return p
}

func (p RetryPolicy) backoff(attempt int) time.Duration {
	d := p.First
	for i := 2; i < attempt && d < p.Max; i++ {
		d *= 2
	}
	return min(d, p.Max)
}

// WebhookWhen says when a webhook is called.
type WebhookWhen string

// When webhooks are called.
const (
	WebhookPreMortem  WebhookWhen = "pre_mortem"
	WebhookPostMortem WebhookWhen = "post_mortem"
)

// Webhook is an operator-configured URL that gets a signed POST
// {"event":When,"termination":status} for every termination, cut at
// Budget like a Go hook (zero means DefaultHookBudget). Not retried.
type Webhook struct {
	URL    string        `yaml:"url" json:"url"`
	When   WebhookWhen   `yaml:"when" json:"when"`
	Budget time.Duration `yaml:"budget" json:"budget"`
}

func (w Webhook) validate() error {
	var errs []error
	if err := checkURL(w.URL); err != nil {
		errs = append(errs, fmt.Errorf("url: %w", err))
	}
	if w.When != WebhookPreMortem && w.When != WebhookPostMortem {
		errs = append(errs, fmt.Errorf("when %q: want pre_mortem or post_mortem", string(w.When)))
	}
	if w.Budget < 0 {
		errs = append(errs, fmt.Errorf("budget %v is negative", w.Budget))
	}
	return errors.Join(errs...)
}

// newHTTPClient returns a client that reaches only what guard allows,
// follows no redirect and uses no proxy.
func newHTTPClient(guard *addressGuard, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           guard.DialContext,
			TLSHandshakeTimeout:   timeout,
			ResponseHeaderTimeout: timeout,
			MaxIdleConns:          8,
			IdleConnTimeout:       30 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// send sends one signed request and reads a bounded answer; any status
// but 2xx is an error.
func (m *Manager) send(ctx context.Context, url string, key, body []byte, delivery string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "request %s: %v", url, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "tartarus-thanatos")
	req.Header.Set("Tartarus-Delivery", delivery)
	req.Header.Set(SignatureHeader, Sign(key, body, m.clock.Now()))
	resp, err := m.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s answered %s", url, resp.Status)
	}
	return nil
}

func (m *Manager) webhooks(ctx context.Context, when WebhookWhen, st *tartarus.TerminationStatus) {
	for _, w := range m.cfg.Webhooks {
		if w.When != when {
			continue
		}
		body, err := json.Marshal(struct {
			Event       WebhookWhen                 `json:"event"`
			Termination *tartarus.TerminationStatus `json:"termination"`
		}{when, st})
		if err != nil {
			continue
		}
		budget := w.Budget
		if budget <= 0 {
			budget = DefaultHookBudget
		}
		err = m.within(ctx, budget, func(ctx context.Context) error {
			return m.send(ctx, w.URL, m.cfg.WebhookKey, body, tartarus.NewID("wh-"))
		})
		m.hookDone(string(when)+"_webhook", w.URL, st, err)
	}
}

// notify delivers st to its CallbackURL in the background, retrying with
// backoff on the manager's clock until it is accepted, the attempts run
// out or the manager closes.
func (m *Manager) notify(st *tartarus.TerminationStatus) {
	if st.CallbackURL == "" {
		return
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		log := m.log.With("sandbox", st.SandboxID, "url", st.CallbackURL)
		key, err := m.cfg.CallbackKey(st.Tenant)
		if err != nil {
			log.Warn("no callback key; callback dropped", "err", err)
			m.metrics.callbacks.WithLabelValues("dropped").Inc()
			return
		}
		body, err := json.Marshal(st)
		if err != nil {
			return
		}
		delivery := tartarus.NewID("cb-")
		p := m.cfg.Retry
		for attempt := 1; attempt <= p.Attempts; attempt++ {
			if attempt > 1 {
				wait, stop := m.after(p.backoff(attempt))
				select {
				case <-wait:
					stop()
				case <-m.ctx.Done():
					stop()
					return
				}
			}
			err = m.send(m.ctx, st.CallbackURL, key, body, delivery)
			if err == nil {
				m.metrics.callbacks.WithLabelValues("delivered").Inc()
				return
			}
			if m.ctx.Err() != nil {
				return
			}
			log.Info("callback failed; will retry", "attempt", attempt, "err", err)
			if errors.Is(err, tartarus.ErrPermissionDenied) || errors.Is(err, tartarus.ErrInvalid) {
				break // the address rule will not change its mind
			}
		}
		log.Warn("callback given up", "err", err)
		m.metrics.callbacks.WithLabelValues("failed").Inc()
	}()
}
