package cerberus

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestUnauthenticatedFloodIsBounded sends 100,000 requests with bogus
// credentials (from one address, from one IPv6 /64 with changing host
// bits, and from thousands of addresses) and checks that the audit log
// grows by a bounded amount, keeps the entry written before the flood,
// still verifies, and that every failure not written is counted.
func TestUnauthenticatedFloodIsBounded(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	dir := t.TempDir()
	keys, err := OpenKeyStore(filepath.Join(dir, "apikeys.json"), clk)
	if err != nil {
		t.Fatal(err)
	}
	auditDir := filepath.Join(dir, "audit")
	audit, err := OpenAuditLog(AuditLogConfig{Dir: auditDir, MaxSize: 1 << 20, Keep: 2, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	defer audit.Close()
	metrics, _ := NewMetrics(prometheus.NewRegistry())
	cb, err := New(Config{Keys: keys, Policy: StaticPolicy(DefaultPolicy()), Audit: audit, Metrics: metrics, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if err := audit.Append(ctx, AuditRecord{Timestamp: clk.Now(), RequestID: "before-the-flood", Result: AuditResultSuccess}); err != nil {
		t.Fatal(err)
	}
	h := cb.Guard().Wrap(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { t.Error("a bogus credential got through") }))

	const n = 100_000
	start := clk.Now()
	for i := range n {
		req := httptest.NewRequest("GET", "/v1/sandboxes", nil)
		req.Header.Set("Authorization", fmt.Sprintf("Bearer %s%012x_%032x", KeyPrefix, i, i))
		switch i % 3 {
		case 0:
			req.RemoteAddr = "192.0.2.7:40000"
		case 1:
			req.RemoteAddr = fmt.Sprintf("[2001:db8:1:2::%x]:40000", i)
		default:
			req.RemoteAddr = fmt.Sprintf("10.%d.%d.%d:40000", i>>16&255, i>>8&255, i&255)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusUnauthorized {
			t.Fatalf("request %d: %d", i, rec.Code)
		}
		clk.Advance(time.Millisecond)
	}
	elapsed := clk.Now().Sub(start).Seconds()

	rep, err := VerifyAuditDir(ctx, auditDir)
	if err != nil || rep.Broken != nil {
		t.Fatalf("verify after the flood: %+v %v", rep, err)
	}
	written := rep.Entries - 1
	cfg := FailureAuditConfig{}.withDefaults()
	if limit := float64(cfg.GlobalBurst) + cfg.GlobalRate*elapsed + 1; float64(written) > limit {
		t.Errorf("%d failures written in %.0f s, over the global bound %.0f", written, elapsed, limit)
	}
	suppressed := testutil.ToFloat64(metrics.suppressed)
	if int(suppressed)+written != n {
		t.Errorf("%d written + %.0f suppressed != %d requests", written, suppressed, n)
	}
	var size int64
	ents, _ := os.ReadDir(auditDir)
	for _, e := range ents {
		fi, _ := e.Info()
		size += fi.Size()
	}
	if size > 1<<20 {
		t.Errorf("the flood cost %d bytes of audit log", size)
	}
	got, err := audit.Query(ctx, AuditFilter{Limit: 1 << 20})
	if err != nil || len(got) == 0 || got[0].RequestID != "before-the-flood" {
		t.Fatalf("the entry before the flood is gone (%d entries, %v)", len(got), err)
	}
	notes := 0
	for _, r := range got {
		if strings.Contains(r.Reason, "earlier failures from 192.0.2.7 since") {
			notes++
		}
	}
	if notes == 0 {
		t.Error("no entry sums up the failures not written for 192.0.2.7")
	}
	t.Logf("%d requests over %.0f s (fake clock): %d entries written, %.0f suppressed, %d bytes", n, elapsed, written, suppressed, size)
}
