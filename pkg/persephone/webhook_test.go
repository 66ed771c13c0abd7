package persephone

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestSendCapacityWebhook(t *testing.T) {
	var got CapacityWebhookPayload
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if err := json.NewDecoder(r.Body).Decode(&got); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if got.Recommendation.RecommendedNodes > 100 {
			w.WriteHeader(http.StatusConflict)
		}
	}))
	defer srv.Close()
	ctx := context.Background()
	if err := SendCapacityWebhook(ctx, srv.Client(), srv.URL, &CapacityRecommendation{RecommendedNodes: 7, Reason: "r"}); err != nil {
		t.Fatal(err)
	}
	if got.Kind != "tartarus.capacity.v1" || got.Recommendation.RecommendedNodes != 7 {
		t.Fatalf("%+v", got)
	}
	if err := SendCapacityWebhook(ctx, srv.Client(), srv.URL, &CapacityRecommendation{RecommendedNodes: 700}); err == nil {
		t.Fatal("409 accepted")
	}
	if err := SendCapacityWebhook(ctx, srv.Client(), "file:///etc/passwd", &CapacityRecommendation{}); err == nil {
		t.Fatal("file URL accepted")
	}
}
