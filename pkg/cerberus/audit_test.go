package cerberus

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestAuditLogAppendQueryRotate(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	dir := t.TempDir()
	l, err := OpenAuditLog(AuditLogConfig{Dir: dir, MaxSize: 4 << 10, Keep: 3, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := AuditResultSuccess
			if i%4 == 0 {
				res = AuditResultDenied
			}
			clock.Advance(time.Millisecond)
			err := l.Append(ctx, AuditRecord{
				Timestamp: clock.Now(), RequestID: fmt.Sprint(i), Result: res,
				Identity: &AuditIdentity{ID: "tk_1", Type: IdentityTypeService, TenantID: "acme"},
				Resource: AuditResource{Type: ResourceTypeSandbox, TenantID: "acme"},
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	files, _ := filepath.Glob(filepath.Join(dir, "audit-*.log"))
	if len(files) != 3 {
		t.Fatalf("%d rotated files kept, want 3", len(files))
	}
	for _, f := range append(files, filepath.Join(dir, auditFile)) {
		st, _ := os.Stat(f)
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v", f, st.Mode().Perm())
		}
		if st.Size() > 4<<10+1024 {
			t.Errorf("%s is %d bytes, past the rotation size", f, st.Size())
		}
	}
	all, err := l.Query(ctx, AuditFilter{Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) == 0 || len(all) >= n {
		t.Fatalf("%d entries readable after pruning (of %d)", len(all), n)
	}
	last, _ := l.Query(ctx, AuditFilter{Limit: 5, Result: AuditResultDenied})
	if len(last) != 5 {
		t.Fatalf("last denied: %d", len(last))
	}
	for _, r := range last {
		if r.Result != AuditResultDenied {
			t.Fatalf("filter let through %+v", r)
		}
	}
	if got, _ := l.Query(ctx, AuditFilter{Tenant: "globex"}); len(got) != 0 {
		t.Fatalf("tenant filter: %d", len(got))
	}
	if got, _ := l.Query(ctx, AuditFilter{Identity: "service:tk_1", Limit: 1}); len(got) != 1 {
		t.Fatalf("identity filter: %d", len(got))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestAuditLogSurvivesTornLineAndReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clock := newFakeClock()
	l, _ := OpenAuditLog(AuditLogConfig{Dir: dir, Clock: clock})
	l.Append(ctx, AuditRecord{Timestamp: clock.Now(), RequestID: "a", Result: AuditResultSuccess})
	l.Close()
	// A crash in the middle of a write leaves a torn line.
	f, _ := os.OpenFile(filepath.Join(dir, auditFile), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"timestamp":"2026-`)
	f.Close()
	l, _ = OpenAuditLog(AuditLogConfig{Dir: dir, Clock: clock})
	defer l.Close()
	l.Append(ctx, AuditRecord{Timestamp: clock.Now(), RequestID: "b", Result: AuditResultSuccess})
	got, err := l.Query(ctx, AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	// The torn line is skipped; the entries before and after it are intact.
	if len(got) != 2 || got[0].RequestID != "a" || got[1].RequestID != "b" {
		t.Fatalf("entries %+v", got)
	}
}

func TestAuditRecordShape(t *testing.T) {
	e := &AuditEntry{
		Timestamp: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), RequestID: "r1",
		Identity: &Identity{ID: "tk_abc", Type: IdentityTypeService, TenantID: "acme", Roles: []string{"viewer"}, Attributes: map[string]string{"auth_method": "api_key"}},
		Action:   ActionRead, Resource: Resource{Type: ResourceTypeSandbox, ID: "sb-1", TenantID: "acme"},
		Result: AuditResultDenied, Latency: 1500 * time.Microsecond, SourceIP: "127.0.0.1", UserAgent: "curl",
		Reason: "denied: x", Method: "GET", Path: "/v1/sandboxes/sb-1", Status: 404,
	}
	b, _ := json.Marshal(e.Record())
	want := `{"timestamp":"2026-01-02T03:04:05Z","request_id":"r1","identity":{"id":"tk_abc","type":"service","tenant_id":"acme","roles":["viewer"],"auth_method":"api_key"},"action":"read","resource":{"type":"sandbox","id":"sb-1","tenant_id":"acme"},"result":"denied","reason":"denied: x","latency_ms":1.5,"source_ip":"127.0.0.1","user_agent":"curl","method":"GET","path":"/v1/sandboxes/sb-1","status":404}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
	if strings.Contains(string(b), "Attributes") {
		t.Fatal("attributes leaked")
	}
}
