package olympus

import (
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"
)

// BenchmarkAPIGetSandbox measures the API's own overhead (routing, guard,
// store read, JSON) for one request over loopback HTTP.
func BenchmarkAPIGetSandbox(b *testing.B) {
	ta := newTestAPI(b)
	sb := ta.create(b, "acme")
	req, _ := http.NewRequest("GET", ta.srv.URL+"/v1/sandboxes/"+sb.ID, nil)
	req.Header.Set("X-Test-Tenant", "acme")
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			b.Fatalf("%v %v", err, resp)
		}
		resp.Body.Close()
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	report(b, lat)
}

// BenchmarkAPIExec measures an exec of `true` through the API on the fake
// runtime (a host process), i.e. API + node agent overhead plus fork/exec.
func BenchmarkAPIExec(b *testing.B) {
	ta := newTestAPI(b)
	sb := ta.create(b, "acme")
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		req, _ := http.NewRequest("POST", ta.srv.URL+"/v1/sandboxes/"+sb.ID+"/exec", strings.NewReader(`{"cmd":["true"]}`))
		req.Header.Set("X-Test-Tenant", "acme")
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			b.Fatalf("%v %v", err, resp)
		}
		resp.Body.Close()
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	report(b, lat)
}

func report(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
