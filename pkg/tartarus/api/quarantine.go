package api

import "github.com/tartarus-sandbox/tartarus/pkg/tartarus"

// QuarantineBody is the body of POST /v1/sandboxes/{id}/quarantine.
type QuarantineBody struct {
	Reason   tartarus.QuarantineReason `json:"reason"`
	Evidence []EvidenceBody            `json:"evidence,omitempty"`
}

// EvidenceBody is one piece of evidence a caller hands in; Data is base64
// in JSON.
type EvidenceBody struct {
	Type        tartarus.EvidenceType `json:"type,omitempty"`
	Description string                `json:"description,omitempty"`
	Data        []byte                `json:"data,omitempty"`
}

// QuarantineList is the answer of GET /v1/quarantine.
type QuarantineList struct {
	Quarantines []*tartarus.QuarantineRecord `json:"quarantines"`
}

// QuarantineDetail is the answer of GET /v1/quarantine/{id}: the latest
// record of the sandbox and every examination report.
type QuarantineDetail struct {
	Record  *tartarus.QuarantineRecord    `json:"record"`
	Reports []*tartarus.ExaminationReport `json:"reports"`
}

// ApproveBody is the body of POST /v1/quarantine/{id}/release.
type ApproveBody struct {
	Reason     string   `json:"reason"`
	Conditions []string `json:"conditions,omitempty"`
	// ExpiresInS is how long the conditions hold; 0 means the server's
	// default (24 h) when there are conditions.
	ExpiresInS int `json:"expires_in_s,omitempty"`
}
