package typhon

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Journal keeps quarantine records, examination reports and the policy
// durably, so a quarantine survives a restart of the server.
type Journal interface {
	// PutRecord creates or replaces the record with rec.ID.
	PutRecord(ctx context.Context, rec *QuarantineRecord) error
	// Records returns every record (newest last).
	Records(ctx context.Context) ([]*QuarantineRecord, error)
	PutReport(ctx context.Context, rep *ExaminationReport) error
	// Reports returns a sandbox's reports, oldest first.
	Reports(ctx context.Context, sandboxID string) ([]*ExaminationReport, error)
	PutPolicy(ctx context.Context, p *QuarantinePolicy) error
	// Policy returns the stored policy, or nil.
	Policy(ctx context.Context) (*QuarantinePolicy, error)
}

// ActorJournal is a Journal that also keeps who acted in each sandbox
// (exec, files) while it was not held, so that every manager sharing the
// journal (a cluster's replicas, each serving some of the calls) refuses
// them as approvers of a later release.
type ActorJournal interface {
	// AddActor notes (or notes again, as the latest) that actor acted.
	AddActor(ctx context.Context, sandboxID, actor string, at time.Time) error
	// Actors returns the sandbox's latest max actors, the latest last.
	Actors(ctx context.Context, sandboxID string, max int) ([]string, error)
	// ForgetActors drops the actors noted before before of every sandbox
	// keep refuses.
	ForgetActors(ctx context.Context, before time.Time, keep func(sandboxID string) bool) error
}

// MemJournal is a Journal in memory, for tests and a server without a
// database.
type MemJournal struct {
	mu      sync.Mutex
	records []*QuarantineRecord
	reports []*ExaminationReport
	policy  *QuarantinePolicy
}

var _ Journal = (*MemJournal)(nil)

// NewMemJournal returns an empty journal.
func NewMemJournal() *MemJournal { return &MemJournal{} }

// PutRecord implements Journal.
func (j *MemJournal) PutRecord(_ context.Context, rec *QuarantineRecord) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	c := cloneRecord(rec)
	for i, r := range j.records {
		if r.ID == rec.ID {
			j.records[i] = c
			return nil
		}
	}
	j.records = append(j.records, c)
	return nil
}

// Records implements Journal.
func (j *MemJournal) Records(context.Context) ([]*QuarantineRecord, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]*QuarantineRecord, len(j.records))
	for i, r := range j.records {
		out[i] = cloneRecord(r)
	}
	return out, nil
}

// PutReport implements Journal.
func (j *MemJournal) PutReport(_ context.Context, rep *ExaminationReport) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	c := *rep
	c.Findings = slices.Clone(rep.Findings)
	j.reports = append(j.reports, &c)
	return nil
}

// Reports implements Journal.
func (j *MemJournal) Reports(_ context.Context, sandboxID string) ([]*ExaminationReport, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []*ExaminationReport
	for _, r := range j.reports {
		if r.SandboxID == sandboxID {
			c := *r
			out = append(out, &c)
		}
	}
	return out, nil
}

// PutPolicy implements Journal.
func (j *MemJournal) PutPolicy(_ context.Context, p *QuarantinePolicy) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.policy = clonePolicy(p)
	return nil
}

// Policy implements Journal.
func (j *MemJournal) Policy(context.Context) (*QuarantinePolicy, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.policy == nil {
		return nil, nil
	}
	return clonePolicy(j.policy), nil
}

func cloneRecord(r *QuarantineRecord) *QuarantineRecord {
	c := *r
	c.Evidence = slices.Clone(r.Evidence)
	for i := range c.Evidence {
		c.Evidence[i].Data = nil
	}
	c.Notes = slices.Clone(r.Notes)
	if r.Approval != nil {
		a := *r.Approval
		a.Conditions = slices.Clone(a.Conditions)
		c.Approval = &a
	}
	return &c
}

func clonePolicy(p *QuarantinePolicy) *QuarantinePolicy {
	c := *p
	c.AutoTriggers = slices.Clone(p.AutoTriggers)
	c.QuarantineNodes = slices.Clone(p.QuarantineNodes)
	c.Isolation.AllowedEgress = slices.Clone(p.Isolation.AllowedEgress)
	return &c
}
