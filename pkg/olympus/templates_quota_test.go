package olympus

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestTemplateBytesQuota: a tenant whose templates (build cache included)
// take its template_bytes quota is refused a save with 429 quota_exceeded
// and a sentence saying what to delete; GET /v1/quotas shows the bytes.
func TestTemplateBytesQuota(t *testing.T) {
	set := cerberus.QuotaSet{Tenants: map[string]cerberus.Quota{
		"acme":   {TemplateBytes: 3000},
		"globex": {TemplateBytes: 3000},
	}}
	ta := newQuotaAPI(t, set, nil)
	ta.cat["web..1"] = &tartarus.Image{Name: "web..1", Tenant: "acme", SizeBytes: 2000}
	ta.cat["cache-abc"] = &tartarus.Image{Name: "cache-abc", Tenant: "acme", SizeBytes: 1000}
	ta.cat["other..1"] = &tartarus.Image{Name: "other..1", Tenant: "globex", SizeBytes: 1000}

	for _, tt := range []struct {
		tenant string
		full   bool
	}{{"acme", true}, {"globex", false}} {
		a := ta.do(t, call{method: "POST", path: "/v1/sandboxes", tenant: tt.tenant, body: `{"template":"base"}`})
		if a.status != http.StatusCreated {
			t.Fatalf("%s create: %d %s", tt.tenant, a.status, a.body)
		}
		var sb tartarus.Sandbox
		_ = json.Unmarshal(a.body, &sb)
		a = ta.do(t, call{method: "POST", path: "/v1/sandboxes/" + sb.ID + "/template", tenant: tt.tenant, body: `{"name":"more"}`})
		if got := a.status == 429; got != tt.full {
			t.Errorf("%s save: %d %s; want refused=%v", tt.tenant, a.status, a.body, tt.full)
		}
		if tt.full && (a.errCode() != "quota_exceeded" || !strings.Contains(string(a.body), "template_bytes") || !strings.Contains(string(a.body), "3000 bytes")) {
			t.Errorf("%s save refused with %s", tt.tenant, a.body)
		}
		a = ta.do(t, call{method: "GET", path: "/v1/quotas", tenant: tt.tenant})
		var rep QuotaReport
		if err := json.Unmarshal(a.body, &rep); err != nil || rep.Limits.TemplateBytes != 3000 {
			t.Fatalf("GET /v1/quotas: %d %s", a.status, a.body)
		}
		if want := map[string]int64{"acme": 3000, "globex": 1000}[tt.tenant]; rep.Usage.TemplateBytes != want {
			t.Errorf("%s template_bytes in use %d, want %d", tt.tenant, rep.Usage.TemplateBytes, want)
		}
	}
}
