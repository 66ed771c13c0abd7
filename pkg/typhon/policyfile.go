package typhon

import (
	"bytes"
	"encoding/json"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// MaxPolicyFile bounds a policy file.
const MaxPolicyFile = 1 << 20

// ParsePolicyFile reads a policy from YAML or JSON (JSON is YAML), with the
// API's field names; "max_quarantine_duration" may be given as a Go
// duration ("24h") instead of max_quarantine_duration_ns. Unknown fields
// are refused.
func ParsePolicyFile(data []byte) (*QuarantinePolicy, error) {
	if len(data) > MaxPolicyFile {
		return nil, tartarus.Errorf(tartarus.ErrTooLarge, "policy file over %d bytes", MaxPolicyFile)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "policy file: %v", err)
	}
	if v, ok := doc["max_quarantine_duration"]; ok {
		s, _ := v.(string)
		d, err := time.ParseDuration(s)
		if err != nil {
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "max_quarantine_duration %v: want a duration like 24h", v)
		}
		delete(doc, "max_quarantine_duration")
		doc["max_quarantine_duration_ns"] = int64(d)
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "policy file: %v", err)
	}
	var p QuarantinePolicy
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "policy file: %v", err)
	}
	return &p, nil
}
