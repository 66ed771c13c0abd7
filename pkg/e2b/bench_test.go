package e2b

import (
	"strings"
	"testing"
)

// BenchmarkStatThroughTranslation is the cost the E2B layer adds to one
// unary call (Connect JSON in, a native call over the in-process
// connection to a fake API, Connect JSON out), without a VM.
func BenchmarkStatThroughTranslation(b *testing.B) {
	h, err := New(Config{Native: fakeNative(nil)})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	hdr := envdHeaders(map[string]string{"Content-Type": "application/json"})
	b.ReportAllocs()
	for b.Loop() {
		w := do(b, h, "POST", "/filesystem.Filesystem/Stat", strings.NewReader(`{"path":"/root/a.txt"}`), hdr)
		if w.Code != 200 {
			b.Fatalf("%d %s", w.Code, w.Body)
		}
	}
}
