package charon

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// RequestIDHeader carries the request id. The ferry keeps a well-formed id
// the client sent, makes one up otherwise, sends it to the shore and returns
// it on the answer.
const RequestIDHeader = "X-Request-Id"

// maxReplayBody is the largest request body the ferry keeps in memory so
// that it can send it again on a retry. Larger bodies (and bodies of unknown
// length) go out once, streamed, without retries.
const maxReplayBody = 1 << 20

// maxShores bounds the shores of one ferry; choosing one is linear in it.
const maxShores = 256

// CrossingError is a crossing the ferry refused or could not complete. Code
// is the HTTP status the client gets, Reason a stable machine-readable code
// and Message the text the client sees; Err (logged, not shown) is the cause.
type CrossingError struct {
	Code       int
	Reason     string
	Message    string
	RetryAfter time.Duration
	Err        error
}

func (e *CrossingError) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

// Unwrap returns the cause and the tartarus error class of the refusal.
func (e *CrossingError) Unwrap() []error {
	var class error
	switch e.Code {
	case http.StatusTooManyRequests:
		class = tartarus.ErrResourceExhausted
	case http.StatusGatewayTimeout:
		class = tartarus.ErrTimeout
	case http.StatusBadRequest:
		class = tartarus.ErrInvalid
	default:
		class = tartarus.ErrUnavailable
	}
	return []error{class, e.Err}
}

var errCrossingTimeout = errors.New("charon: crossing timeout")

// Options are what New needs. Only Config is required.
type Options struct {
	Config FerryConfig
	// Limiter overrides the limiter built from Config.RateLimiting (a
	// LocalLimiter when enabled); pass a RedisLimiter to share limits.
	Limiter Limiter
	// Clock decides breakers, ejections, rate-limit buckets and the retry
	// budget; nil: clock.System. Health-check intervals, retry backoff and
	// the crossing timeout run on real time.
	Clock  clock.Clock
	Logger *slog.Logger
	// Transport carries attempts to shores. nil means the ferry's own
	// HTTP/1.1 connection pool, with a tuned http.Transport for https
	// shores and upgrades; a Transport given here is used for everything.
	Transport *http.Transport
	// StdTransport sends plain-HTTP attempts through net/http's Transport
	// too, instead of the ferry's own pool (an escape hatch, and the
	// baseline of the benchmark).
	StdTransport bool
}

// BoatFerry is the Ferry: a reverse proxy over registered shores. Use New;
// call Close when done to stop the health checks.
type BoatFerry struct {
	cfg       FerryConfig
	clock     clock.Clock
	log       *slog.Logger
	limiter   Limiter
	proven    *provenCreds // credentials shores accepted, for the limiter
	transport *http.Transport
	rt        interface {
		http.RoundTripper
		CloseIdleConnections()
	}
	healthClient *http.Client
	proxy        *httputil.ReverseProxy
	m            *metrics
	budget       *retryBudget

	mu     sync.Mutex                    // serialises registration
	shores atomic.Pointer[[]*shoreState] // copy on write
	rr     atomic.Uint64
	wrrMu  sync.Mutex

	waiting atomic.Int64 // crossings waiting for headers

	ctx    context.Context // cancelled by Close; parent of health checks
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

var (
	_ Ferry        = (*BoatFerry)(nil)
	_ http.Handler = (*BoatFerry)(nil)
)

// New returns a ferry with no shores.
func New(opts Options) (*BoatFerry, error) {
	if err := opts.Config.Validate(); err != nil {
		return nil, err
	}
	cfg := opts.Config.Defaults()
	f := &BoatFerry{cfg: cfg, clock: opts.Clock, log: opts.Logger, limiter: opts.Limiter, transport: opts.Transport}
	if f.clock == nil {
		f.clock = clock.System{}
	}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	f.proven = newProvenCreds(f.clock)
	if f.limiter == nil && cfg.RateLimiting.Enabled {
		f.limiter = NewLocalLimiter(cfg.RateLimiting.RequestsPerSecond, cfg.RateLimiting.Burst, f.clock)
	}
	switch {
	case f.transport != nil:
		f.rt = f.transport
	case opts.StdTransport:
		f.transport = NewTransport(cfg)
		f.rt = f.transport
	default:
		f.transport = NewTransport(cfg)
		f.rt = newH1Transport(f.transport, cfg)
	}
	f.healthClient = &http.Client{
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 1,
			IdleConnTimeout:     time.Minute,
			DisableCompression:  true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	f.budget = newRetryBudget(cfg.Retry, f.clock)
	empty := []*shoreState{}
	f.shores.Store(&empty)
	f.ctx, f.cancel = context.WithCancel(context.Background())
	f.m = newMetrics(f)
	f.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetXForwarded()
			pr.Out.Host = "" // the shore's host:port, set per attempt
		},
		Transport: roundTripperFunc(f.roundTrip),
		// Answers without a Content-Length (NDJSON exec output, event
		// streams) are flushed on every write by ReverseProxy itself; a
		// FlushInterval of -1 would add a timer and an early flush to every
		// ordinary answer as well.
		FlushInterval:  0,
		BufferPool:     newBufferPool(),
		ErrorLog:       slog.NewLogLogger(f.log.Handler(), slog.LevelDebug),
		ModifyResponse: f.modifyResponse,
		ErrorHandler:   f.proxyError,
	}
	return f, nil
}

// NewTransport returns the transport the ferry uses for shores: keep-alive
// pools large enough for a busy ferry, no compression (bodies pass through
// as they are), HTTP/1.1 (WebSocket upgrades need it).
func NewTransport(cfg FerryConfig) *http.Transport {
	return &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          0,
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
		ResponseHeaderTimeout: cfg.Retry.AttemptTimeout,
		ExpectContinueTimeout: time.Second,
	}
}

// Handler returns the ferry's public handler: GET /ferry/health answers
// with FerryHealth; everything else crosses to a shore.
func (f *BoatFerry) Handler() http.Handler { return f }

// ServeHTTP crosses one client request and streams the answer back.
func (f *BoatFerry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/ferry/health" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		f.serveHealth(w, r)
		return
	}
	id := r.Header.Get(RequestIDHeader)
	if !validRequestID(id) {
		id = newRequestID()
		r.Header.Set(RequestIDHeader, id)
	}
	if f.limiter != nil {
		d := f.take(r.Context(), r)
		setRateHeaders(w.Header(), d)
		if !d.Allowed {
			w.Header().Set(RequestIDHeader, id)
			f.writeCrossingError(w, rateLimited(d))
			return
		}
	}
	if r.ContentLength != 0 {
		// The shore may answer (and the answer be flushed to the client)
		// before the request body is all sent: without full duplex the
		// server closes the body on the first flush and the rest of the
		// request, and with it the stream, is cut.
		_ = http.NewResponseController(w).EnableFullDuplex()
	}
	f.proxy.ServeHTTP(w, r)
}

// Cross implements Ferry: it charges the rate limit, crosses req (a client
// request: URL path and query are kept, scheme and host are the shore's)
// and returns the shore's answer. The caller must close its Body.
func (f *BoatFerry) Cross(ctx context.Context, req *http.Request) (*http.Response, error) {
	if f.limiter != nil {
		if d := f.take(ctx, req); !d.Allowed {
			return nil, rateLimited(d)
		}
	}
	req = req.Clone(ctx)
	req.RequestURI = ""
	if !validRequestID(req.Header.Get(RequestIDHeader)) {
		req.Header.Set(RequestIDHeader, newRequestID())
	}
	return f.roundTrip(req)
}

func (f *BoatFerry) take(ctx context.Context, r *http.Request) Decision {
	rl := f.cfg.RateLimiting
	key := limitKey(r, rl.KeyFunc, rl.TrustTenantHeader)
	// A credential no shore has accepted yet is charged to its address
	// first: bogus tokens cannot each buy a fresh bucket.
	if ip := ipKey(r, key, f.proven); ip != "" {
		d, err := f.limiter.Take(ctx, ip)
		if err != nil {
			f.m.limiterErrors.Inc()
			f.log.Warn("rate limiter", slog.Any("err", err))
		}
		if !d.Allowed {
			return d
		}
	}
	d, err := f.limiter.Take(ctx, key)
	if err != nil {
		f.m.limiterErrors.Inc()
		f.log.Warn("rate limiter", slog.Any("err", err))
	}
	return d
}

func rateLimited(d Decision) *CrossingError {
	return &CrossingError{Code: http.StatusTooManyRequests, Reason: "rate_limited",
		Message: "rate limit exceeded; retry after the Retry-After header's seconds", RetryAfter: max(d.RetryAfter, time.Millisecond)}
}

// setRateHeaders sets the IETF draft RateLimit-* headers and the older
// X-RateLimit-* ones that many clients read.
func setRateHeaders(h http.Header, d Decision) {
	limit := strconv.Itoa(d.Limit)
	rem := strconv.Itoa(d.Remaining)
	reset := strconv.Itoa(ceilSeconds(d.Reset))
	h["Ratelimit-Limit"] = []string{limit}
	h["Ratelimit-Remaining"] = []string{rem}
	h["Ratelimit-Reset"] = []string{reset}
	h["X-Ratelimit-Limit"] = []string{limit}
	h["X-Ratelimit-Remaining"] = []string{rem}
	h["X-Ratelimit-Reset"] = []string{reset}
}

func ceilSeconds(d time.Duration) int {
	return int((d + time.Second - 1) / time.Second)
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (fn roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return fn(r) }

// roundTrip sends req to a shore, retrying on another shore when that is
// safe and the budget allows, and returns once a shore's answer headers are
// in. The answer's body is the shore's, unbuffered.
func (f *BoatFerry) roundTrip(req *http.Request) (*http.Response, error) {
	clientCtx := req.Context()
	ctx := clientCtx
	f.budget.request()
	f.waiting.Add(1)
	defer f.waiting.Add(-1)

	var cancel context.CancelCauseFunc
	var timer *time.Timer
	if f.cfg.CrossingTimeout > 0 {
		ctx, cancel = context.WithCancelCause(ctx)
		timer = time.AfterFunc(f.cfg.CrossingTimeout, func() { cancel(errCrossingTimeout) })
	}
	fail := func(err error) (*http.Response, error) {
		if timer != nil {
			timer.Stop()
			cancel(err)
		}
		return nil, err
	}

	maxRetries := max(f.cfg.Retry.MaxRetries, 0)
	var body []byte
	replayable := req.Body == nil || req.Body == http.NoBody
	if !replayable && maxRetries > 0 && req.ContentLength > 0 && req.ContentLength <= maxReplayBody {
		var err error
		body, err = io.ReadAll(io.LimitReader(req.Body, maxReplayBody+1))
		req.Body.Close()
		if err != nil {
			return fail(&CrossingError{Code: http.StatusBadRequest, Reason: "bad_request", Message: "could not read the request body", Err: err})
		}
		replayable = true
	}
	idempotent := isIdempotent(req)
	clientKey := ""
	if f.cfg.Strategy == StrategyIPHash {
		clientKey = clientIP(req)
	}

	var triedBuf [4]*shoreState
	tried := triedBuf[:0]
	var lastErr error
	for attempt := 0; ; attempt++ {
		s := f.pick(clientKey, tried, f.clock.Now())
		if s == nil {
			if lastErr != nil {
				return fail(lastErr)
			}
			return fail(&CrossingError{Code: http.StatusServiceUnavailable, Reason: "no_shore_available",
				Message: "no shore can take the request now", RetryAfter: time.Second})
		}
		out := req.WithContext(ctx)
		u := *req.URL
		u.Scheme, u.Host = s.target.Scheme, s.target.Host
		out.URL = &u
		if body != nil {
			out.Body = io.NopCloser(bytes.NewReader(body))
			out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		}

		start := f.clock.Now()
		s.active.Add(1)
		resp, err := f.rt.RoundTrip(out)
		end := f.clock.Now()
		o := classify(ctx, clientCtx, resp, err)
		f.record(s, o, end.Sub(start), end)
		if o == outcomeCanceled {
			s.active.Add(-1)
			return fail(err)
		}
		tried = append(tried, s)

		retry := attempt < maxRetries && replayable && ctx.Err() == nil && f.retryable(o, resp, idempotent)
		if retry && !f.budget.allowRetry() {
			f.m.budgetExhausted.Inc()
			retry = false
		}
		if !retry {
			if err != nil {
				s.active.Add(-1)
				return fail(f.attemptError(ctx, o, s, err))
			}
			if timer != nil && !timer.Stop() {
				// The deadline passed as the headers came in; the body is cut.
				resp.Body.Close()
				s.active.Add(-1)
				return fail(f.attemptError(ctx, outcomeTimeout, s, errCrossingTimeout))
			}
			f.proven.learn(req, resp.StatusCode)
			resp.Body = trackBody(resp.Body, s, cancel)
			return resp, nil
		}

		f.m.retries.WithLabelValues(o.String()).Inc()
		if err != nil {
			lastErr = f.attemptError(ctx, o, s, err)
		} else {
			lastErr = &CrossingError{Code: resp.StatusCode, Reason: "bad_gateway", Message: fmt.Sprintf("shore answered %d", resp.StatusCode)}
			_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
			resp.Body.Close()
		}
		s.active.Add(-1)
		f.log.Debug("retrying", "shore", s.ID, "outcome", o, "attempt", attempt+1)
		if d := backoff(f.cfg.Retry, attempt); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				if clientCtx.Err() != nil {
					return fail(clientCtx.Err())
				}
				return fail(f.attemptError(ctx, outcomeTimeout, s, context.Cause(ctx)))
			case <-t.C:
			}
		}
	}
}

// retryable says whether an attempt that ended in o may be tried again.
// A connect failure sent nothing, so it is retried whatever the method
// (the body, if any, is in memory). Anything else is retried only for
// idempotent requests: timeouts, broken connections and RetryOn statuses.
func (f *BoatFerry) retryable(o outcome, resp *http.Response, idempotent bool) bool {
	switch o {
	case outcomeConnect:
		return true
	case outcomeTimeout, outcomeError:
		return idempotent
	case outcome5xx:
		return idempotent && f.cfg.Retry.retriesStatus(resp.StatusCode)
	}
	return false
}

// isIdempotent: GET, HEAD, PUT, DELETE, OPTIONS; POST and PATCH only with an
// Idempotency-Key header (the shore then deduplicates).
func isIdempotent(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete, http.MethodOptions:
		return true
	}
	return r.Header.Get("Idempotency-Key") != ""
}

func classify(ctx, clientCtx context.Context, resp *http.Response, err error) outcome {
	if err == nil {
		if resp.StatusCode >= 500 {
			return outcome5xx
		}
		return outcomeOK
	}
	if clientCtx.Err() != nil {
		return outcomeCanceled
	}
	if errors.Is(context.Cause(ctx), errCrossingTimeout) {
		return outcomeTimeout
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return outcomeConnect
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return outcomeTimeout
	}
	return outcomeError
}

func (f *BoatFerry) attemptError(ctx context.Context, o outcome, s *shoreState, err error) error {
	if errors.Is(context.Cause(ctx), errCrossingTimeout) {
		return &CrossingError{Code: http.StatusGatewayTimeout, Reason: "gateway_timeout",
			Message: fmt.Sprintf("no shore answered within %v", f.cfg.CrossingTimeout), Err: fmt.Errorf("shore %s: %w", s.ID, err)}
	}
	switch o {
	case outcomeTimeout:
		return &CrossingError{Code: http.StatusGatewayTimeout, Reason: "gateway_timeout", Message: "the shore did not answer in time", Err: fmt.Errorf("shore %s: %w", s.ID, err)}
	case outcomeConnect:
		return &CrossingError{Code: http.StatusBadGateway, Reason: "bad_gateway", Message: "could not reach a shore", Err: fmt.Errorf("shore %s: %w", s.ID, err)}
	}
	return &CrossingError{Code: http.StatusBadGateway, Reason: "bad_gateway", Message: "the shore failed to answer", Err: fmt.Errorf("shore %s: %w", s.ID, err)}
}

// trackBody wraps a shore's answer body so that closing it ends the
// attempt: the shore's in-flight count drops and the crossing's context is
// released. A 101 answer's body is the upgraded connection and stays
// writable.
func trackBody(rc io.ReadCloser, s *shoreState, cancel context.CancelCauseFunc) io.ReadCloser {
	t := &trackedBody{ReadCloser: rc, s: s, cancel: cancel}
	if rw, ok := rc.(io.ReadWriteCloser); ok {
		return &trackedRWBody{trackedBody: t, w: rw}
	}
	return t
}

type trackedBody struct {
	io.ReadCloser
	s      *shoreState
	cancel context.CancelCauseFunc
	closed atomic.Bool
}

func (t *trackedBody) Close() error {
	err := t.ReadCloser.Close()
	if t.closed.CompareAndSwap(false, true) {
		t.s.active.Add(-1)
		if t.cancel != nil {
			t.cancel(nil)
		}
	}
	return err
}

type trackedRWBody struct {
	*trackedBody
	w io.Writer
}

func (t *trackedRWBody) Write(p []byte) (int, error) { return t.w.Write(p) }

func (f *BoatFerry) modifyResponse(resp *http.Response) error {
	if resp.Request != nil {
		if id := resp.Request.Header.Get(RequestIDHeader); id != "" {
			resp.Header.Set(RequestIDHeader, id)
		}
	}
	f.m.byOutcome[statusClass(resp.StatusCode)].Inc()
	return nil
}

func (f *BoatFerry) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	if id := r.Header.Get(RequestIDHeader); id != "" {
		w.Header().Set(RequestIDHeader, id)
	}
	var ce *CrossingError
	switch {
	case errors.As(err, &ce):
		if ce.Code >= 500 {
			f.log.Warn("crossing failed", "request_id", r.Header.Get(RequestIDHeader), "method", r.Method, "path", r.URL.Path, "status", ce.Code, slog.Any("err", err))
		}
		f.writeCrossingError(w, ce)
	case r.Context().Err() != nil:
		f.m.byOutcome["canceled"].Inc() // the client left; nobody to answer
	default:
		f.log.Warn("crossing failed", "request_id", r.Header.Get(RequestIDHeader), slog.Any("err", err))
		f.writeCrossingError(w, &CrossingError{Code: http.StatusBadGateway, Reason: "bad_gateway", Message: "the shore failed to answer", Err: err})
	}
}

var reasonOutcome = map[string]string{
	"rate_limited":       "rate_limited",
	"no_shore_available": "no_shore",
	"gateway_timeout":    "timeout",
	"bad_gateway":        "bad_gateway",
}

func (f *BoatFerry) writeCrossingError(w http.ResponseWriter, ce *CrossingError) {
	label, ok := reasonOutcome[ce.Reason]
	if !ok {
		label = statusClass(ce.Code)
	}
	f.m.byOutcome[label].Inc()
	if ce.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(max(1, ceilSeconds(ce.RetryAfter))))
	}
	writeJSONError(w, ce.Code, ce.Reason, ce.Message)
}

func writeJSONError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Del("Content-Length")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

// validRequestID accepts up to 128 visible ASCII characters.
func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	return hex.EncodeToString(b[:])
}

type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

func (bp *bufferPool) Get() []byte  { return *(bp.p.Get().(*[]byte)) }
func (bp *bufferPool) Put(b []byte) { bp.p.Put(&b) }

// MetricsHandler serves the ferry's metrics in Prometheus text format.
func (f *BoatFerry) MetricsHandler() http.Handler { return promHandler(f.m.reg) }

// Close stops the health checks and drops idle connections to shores.
func (f *BoatFerry) Close() error {
	f.mu.Lock()
	f.cancel()
	f.mu.Unlock()
	f.wg.Wait()
	f.rt.CloseIdleConnections()
	f.healthClient.CloseIdleConnections()
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
