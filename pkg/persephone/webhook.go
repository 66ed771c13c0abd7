package persephone

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// CapacityWebhookPayload is the JSON body sent to an operator's capacity
// webhook: Tartarus does not start machines; an autoscaler does.
type CapacityWebhookPayload struct {
	Kind           string                  `json:"kind"` // "tartarus.capacity.v1"
	Recommendation *CapacityRecommendation `json:"recommendation"`
}

// SendCapacityWebhook POSTs rec to the operator's URL and fails on any
// status outside 2xx.
func SendCapacityWebhook(ctx context.Context, client *http.Client, target string, rec *CapacityRecommendation) error {
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("capacity webhook %q: want an http or https URL", target)
	}
	body, err := json.Marshal(CapacityWebhookPayload{Kind: "tartarus.capacity.v1", Recommendation: rec})
	if err != nil {
		return fmt.Errorf("capacity webhook: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("capacity webhook: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("capacity webhook %s: %w", u.Host, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("capacity webhook %s: status %d", u.Host, resp.StatusCode)
	}
	return nil
}
