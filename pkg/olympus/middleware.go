package olympus

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// RequestIDHeader carries a request's id, taken from the caller when it
// sends a sane one, generated otherwise, and always echoed back.
const RequestIDHeader = "X-Request-Id"

type reqInfoKey struct{}

// reqInfo is per-request data the middleware logs and handlers fill in.
type reqInfo struct {
	id     string
	tenant string
}

func requestID(ctx context.Context) string {
	if ri, ok := ctx.Value(reqInfoKey{}).(*reqInfo); ok {
		return ri.id
	}
	return ""
}

func setTenant(ctx context.Context, tenant string) {
	if ri, ok := ctx.Value(reqInfoKey{}).(*reqInfo); ok {
		ri.tenant = tenant
	}
}

// validRequestID accepts what is safe to log and echo: 1-128 characters of
// [A-Za-z0-9._-].
func validRequestID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for _, c := range []byte(s) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
		if !ok {
			return false
		}
	}
	return true
}

// middleware adds the request id, recovers panics, counts and times the
// request by route pattern, and writes one access log line.
func (s *Server) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get(RequestIDHeader)
		if !validRequestID(id) {
			id = tartarus.NewID("")
			r.Header.Set(RequestIDHeader, id) // so that the guard's audit sees it
		}
		w.Header().Set(RequestIDHeader, id)
		ri := &reqInfo{id: id}
		r = r.WithContext(context.WithValue(r.Context(), reqInfoKey{}, ri))
		rw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("panic in handler", "request_id", id, "panic", fmt.Sprint(p))
				if rw.status == 0 {
					s.writeError(rw, r, fmt.Errorf("panic: %v", p))
				}
			}
			if rw.status == 0 {
				rw.status = http.StatusOK
			}
			// r.Pattern is set by the mux on this same request value.
			route := r.Pattern
			if route == "" {
				route = "unmatched"
			}
			d := time.Since(start)
			s.metrics.requests.WithLabelValues(route, strconv.Itoa(rw.status)).Inc()
			s.metrics.latency.WithLabelValues(route).Observe(d.Seconds())
			if rw.status == http.StatusUnauthorized && ri.tenant == "" {
				// Anyone can send these at any rate: the auth gateway logs
				// and audits a bounded number per source, the metrics
				// above count them all.
				return
			}
			s.log.Info("request", "request_id", id, "method", r.Method, "path", r.URL.Path, "route", route,
				"status", rw.status, "bytes", rw.bytes, "duration_ms", d.Milliseconds(),
				"tenant", ri.tenant, "remote", r.RemoteAddr)
		}()
		next.ServeHTTP(rw, r)
	})
}

// statusWriter records the status and size of an answer. It keeps Flush and
// Hijack working for streaming handlers.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, fmt.Errorf("hijack not supported")
	}
	return h.Hijack()
}

// Unwrap lets http.ResponseController reach the real writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
