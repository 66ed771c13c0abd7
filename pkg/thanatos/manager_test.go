package thanatos

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Every reason takes the same path; with no grace there is no signal and
// the kill comes at once.
func TestEveryReasonEndsTheSameWay(t *testing.T) {
	for _, reason := range tartarus.Reasons {
		t.Run(string(reason), func(t *testing.T) {
			h := newHarness(t, nil, nil)
			h.target.setActive(3)
			st, err := h.m.InitiateShutdown(ctxT(t), "sb-1", &tartarus.ShutdownOptions{Reason: reason, Tenant: "acme"})
			if err != nil {
				t.Fatal(err)
			}
			if st.Phase != tartarus.PhaseInitiated || st.Reason != reason || !st.GraceDeadline.Equal(t0) {
				t.Fatalf("initiated status %+v", st)
			}
			st = wait(t, h.m, "sb-1")
			want := []tartarus.TerminationPhase{tartarus.PhaseInitiated, tartarus.PhaseSignaled, tartarus.PhaseDraining, tartarus.PhaseTerminating, tartarus.PhaseCompleted}
			if !equal(phasesOf(st), want) {
				t.Errorf("phases %v, want %v", phasesOf(st), want)
			}
			if got := h.target.ops(); !equal(got, []string{"kill", "release"}) {
				t.Errorf("target calls %v, want kill, release (no signal with no grace)", got)
			}
			if st.ExitCode == nil || *st.ExitCode != exitKilled || st.Reason != reason || st.Tenant != "acme" {
				t.Errorf("final status %+v", st)
			}
			if n := testutil.ToFloat64(h.m.Collector().terminations.WithLabelValues(string(reason), "completed")); n != 1 {
				t.Errorf("terminations_total{reason=%s,outcome=completed} = %v", reason, n)
			}
			if n := testutil.CollectAndCount(h.m.Collector().phases); n != 4 {
				t.Errorf("%d phase duration series, want 4 (one per non-final phase entered)", n)
			}
		})
	}
}

// The phase transitions with a grace period, each on the fake clock.
func TestPhaseTransitions(t *testing.T) {
	const grace = 30 * time.Second
	deadline := t0.Add(grace)
	tests := []struct {
		name       string
		opts       tartarus.ShutdownOptions
		setup      func(*fakeTarget)
		drive      func(t *testing.T, h *harness) // moves the clock
		wantPhases []tartarus.TerminationPhase
		wantOps    []string
		wantExit   int
		wantKillAt time.Time
		wantErr    string
	}{
		{
			name: "program traps SIGTERM and finishes at once",
			opts: tartarus.ShutdownOptions{GracePeriod: grace},
			setup: func(f *fakeTarget) {
				f.active, f.trapsTerm = 1, true
			},
			wantPhases: []tartarus.TerminationPhase{tartarus.PhaseInitiated, tartarus.PhaseSignaled, tartarus.PhaseDraining, tartarus.PhaseTerminating, tartarus.PhaseCompleted},
			wantOps:    []string{"signal", "kill", "release"},
			wantExit:   0,
			wantKillAt: t0,
		},
		{
			name:  "drain ends early when the work ends",
			opts:  tartarus.ShutdownOptions{GracePeriod: grace, Reason: tartarus.ReasonNodeDrain},
			setup: func(f *fakeTarget) { f.active = 2 },
			drive: func(t *testing.T, h *harness) {
				waitPhase(t, h.m, "sb-1", tartarus.PhaseDraining)
				for range 20 { // 5 s of polls
					waitTickers(t, h.clk, 2)
					h.clk.Advance(DefaultDrainPoll)
				}
				h.target.setActive(0)
				waitTickers(t, h.clk, 2)
				h.clk.Advance(DefaultDrainPoll)
			},
			wantPhases: []tartarus.TerminationPhase{tartarus.PhaseInitiated, tartarus.PhaseSignaled, tartarus.PhaseDraining, tartarus.PhaseTerminating, tartarus.PhaseCompleted},
			wantOps:    []string{"signal", "kill", "release"},
			wantExit:   0,
			wantKillAt: t0.Add(21 * DefaultDrainPoll),
		},
		{
			name:  "a program ignoring SIGTERM is killed exactly at the deadline",
			opts:  tartarus.ShutdownOptions{GracePeriod: grace, Reason: tartarus.ReasonTimeout},
			setup: func(f *fakeTarget) { f.active = 1 },
			drive: func(t *testing.T, h *harness) {
				waitPhase(t, h.m, "sb-1", tartarus.PhaseDraining)
				// Odd steps, so the deadline is not a multiple of them.
				for h.clk.Now().Add(7 * time.Second).Before(deadline) {
					waitTickers(t, h.clk, 2)
					h.clk.Advance(7 * time.Second)
				}
				waitTickers(t, h.clk, 2)
				h.clk.Advance(deadline.Sub(h.clk.Now()))
			},
			wantPhases: []tartarus.TerminationPhase{tartarus.PhaseInitiated, tartarus.PhaseSignaled, tartarus.PhaseDraining, tartarus.PhaseTerminating, tartarus.PhaseCompleted},
			wantOps:    []string{"signal", "kill", "release"},
			wantExit:   exitKilled,
			wantKillAt: deadline,
		},
		{
			name:       "SIGINT is sent when asked",
			opts:       tartarus.ShutdownOptions{GracePeriod: grace, Signal: tartarus.SignalInt, Reason: tartarus.ReasonResourceLimit},
			wantPhases: []tartarus.TerminationPhase{tartarus.PhaseInitiated, tartarus.PhaseSignaled, tartarus.PhaseDraining, tartarus.PhaseTerminating, tartarus.PhaseCompleted},
			wantOps:    []string{"signal", "kill", "release"},
			wantExit:   0,
			wantKillAt: t0,
		},
		{
			name:       "checkpoint after draining",
			opts:       tartarus.ShutdownOptions{GracePeriod: grace, CreateCheckpoint: true, Tenant: "acme"},
			setup:      func(f *fakeTarget) { f.active, f.trapsTerm = 1, true },
			wantPhases: []tartarus.TerminationPhase{tartarus.PhaseInitiated, tartarus.PhaseSignaled, tartarus.PhaseDraining, tartarus.PhaseCheckpointing, tartarus.PhaseTerminating, tartarus.PhaseCompleted},
			wantOps:    []string{"signal", "checkpoint", "kill", "release"},
			wantExit:   0,
			wantKillAt: t0,
		},
		{
			name:       "checkpoint failure fails the termination but still releases",
			opts:       tartarus.ShutdownOptions{GracePeriod: grace, CreateCheckpoint: true},
			setup:      func(f *fakeTarget) { f.errs["checkpoint"] = errBoom },
			wantPhases: []tartarus.TerminationPhase{tartarus.PhaseInitiated, tartarus.PhaseSignaled, tartarus.PhaseDraining, tartarus.PhaseCheckpointing, tartarus.PhaseTerminating, tartarus.PhaseFailed},
			wantOps:    []string{"signal", "checkpoint", "kill", "release"},
			wantExit:   0,
			wantKillAt: t0,
			wantErr:    "boom",
		},
		{
			name:       "kill failure still releases and fails",
			opts:       tartarus.ShutdownOptions{Reason: tartarus.ReasonPolicyViolation},
			setup:      func(f *fakeTarget) { f.errs["kill"] = errBoom },
			wantPhases: []tartarus.TerminationPhase{tartarus.PhaseInitiated, tartarus.PhaseSignaled, tartarus.PhaseDraining, tartarus.PhaseTerminating, tartarus.PhaseFailed},
			wantOps:    []string{"kill", "release"},
			wantExit:   0, // no work was left when it was killed
			wantKillAt: t0,
			wantErr:    "kill: boom",
		},
		{
			name:       "a sandbox already gone is a completed termination",
			opts:       tartarus.ShutdownOptions{GracePeriod: grace, Reason: tartarus.ReasonSystemShutdown},
			setup:      func(f *fakeTarget) { f.errs["kill"] = tartarus.ErrNotFound; f.errs["release"] = tartarus.ErrNotFound },
			wantPhases: []tartarus.TerminationPhase{tartarus.PhaseInitiated, tartarus.PhaseSignaled, tartarus.PhaseDraining, tartarus.PhaseTerminating, tartarus.PhaseCompleted},
			wantOps:    []string{"signal", "kill", "release"},
			wantExit:   0,
			wantKillAt: t0,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil, nil)
			if tc.setup != nil {
				tc.setup(h.target)
			}
			if _, err := h.m.InitiateShutdown(ctxT(t), "sb-1", &tc.opts); err != nil {
				t.Fatal(err)
			}
			if tc.drive != nil {
				tc.drive(t, h)
			}
			st := wait(t, h.m, "sb-1")
			if !equal(phasesOf(st), tc.wantPhases) {
				t.Errorf("phases %v, want %v", phasesOf(st), tc.wantPhases)
			}
			if got := h.target.ops(); !equal(got, tc.wantOps) {
				t.Errorf("target calls %v, want %v", got, tc.wantOps)
			}
			if st.ExitCode == nil || *st.ExitCode != tc.wantExit {
				t.Errorf("exit code %v, want %d", st.ExitCode, tc.wantExit)
			}
			if at, _ := h.target.callAt("kill"); !at.Equal(tc.wantKillAt) {
				t.Errorf("killed at %v, want %v", at, tc.wantKillAt)
			}
			if !strings.Contains(st.ErrorMessage, tc.wantErr) || (tc.wantErr == "") != (st.ErrorMessage == "") {
				t.Errorf("error %q, want %q", st.ErrorMessage, tc.wantErr)
			}
			for _, p := range st.Phases {
				if p.StartedAt.IsZero() || p.StartedAt.Before(t0) {
					t.Errorf("phase %s started at %v", p.Phase, p.StartedAt)
				}
			}
			if !st.FinishedAt.Equal(st.Started(st.Phase)) {
				t.Errorf("finished at %v, final phase started %v", st.FinishedAt, st.Started(st.Phase))
			}
			// The journal holds the same final record.
			rec, err := h.journal.Get(ctxT(t), "sb-1")
			if err != nil || rec.Phase != st.Phase || len(rec.Phases) != len(st.Phases) {
				t.Errorf("journal has %+v, %v", rec, err)
			}
			cks, _ := h.m.ListCheckpoints(ctxT(t), "")
			if wantCk := tc.opts.CreateCheckpoint && tc.wantErr == ""; wantCk != (len(cks) == 1) {
				t.Errorf("checkpoints %v, want one: %v", cks, wantCk)
			} else if wantCk {
				c := cks[0]
				if c.ID != st.CheckpointID || c.Tenant != "acme" || c.SnapshotRef != "snap/"+c.ID || !c.ExpiresAt.Equal(c.CreatedAt.Add(DefaultCheckpointTTL)) || !c.Restorable {
					t.Errorf("checkpoint %+v (status names %q)", c, st.CheckpointID)
				}
			}
		})
	}
}

func TestForceTerminateCutsTheGrace(t *testing.T) {
	h := newHarness(t, nil, nil)
	h.target.setActive(1)
	if _, err := h.m.InitiateShutdown(ctxT(t), "sb-1", &tartarus.ShutdownOptions{GracePeriod: time.Minute}); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, h.m, "sb-1", tartarus.PhaseDraining)
	waitTickers(t, h.clk, 2)
	h.clk.Advance(10 * time.Second)
	if err := h.m.ForceTerminate(ctxT(t), "sb-1"); err != nil {
		t.Fatal(err)
	}
	st, _ := h.m.Status(ctxT(t), "sb-1")
	if at, _ := h.target.callAt("kill"); !at.Equal(t0.Add(10*time.Second)) || !st.Forced || *st.ExitCode != exitKilled {
		t.Errorf("killed at %v, status %+v", at, st)
	}
	if !st.GraceDeadline.Equal(t0.Add(10 * time.Second)) {
		t.Errorf("deadline %v, want moved to the force", st.GraceDeadline)
	}
	// With nothing under way it terminates with no grace.
	if err := h.m.ForceTerminate(ctxT(t), "sb-2"); err != nil {
		t.Fatal(err)
	}
	if st, _ := h.m.Status(ctxT(t), "sb-2"); st.Phase != tartarus.PhaseCompleted || st.Reason != tartarus.ReasonUserRequest {
		t.Errorf("sb-2 %+v", st)
	}
}

func TestConcurrentInitiateReturnsTheOneInProgress(t *testing.T) {
	h := newHarness(t, nil, nil)
	h.target.setActive(1)
	var wg sync.WaitGroup
	got := make([]*tartarus.TerminationStatus, 16)
	errs := make([]error, 16)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Different options: the first wins, the others get it back.
			got[i], errs[i] = h.m.InitiateShutdown(ctxT(t), "sb-1", &tartarus.ShutdownOptions{GracePeriod: time.Duration(i+1) * time.Second})
		}()
	}
	wg.Wait()
	for i := range got {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if got[i].GracePeriod != got[0].GracePeriod || !got[i].InitiatedAt.Equal(got[0].InitiatedAt) {
			t.Errorf("call %d got grace %v, call 0 got %v", i, got[i].GracePeriod, got[0].GracePeriod)
		}
	}
	waitPhase(t, h.m, "sb-1", tartarus.PhaseDraining)
	waitTickers(t, h.clk, 2)
	h.clk.Advance(got[0].GracePeriod)
	st := wait(t, h.m, "sb-1")
	if n := strings.Count(strings.Join(h.target.ops(), ","), "signal"); n != 1 {
		t.Errorf("signalled %d times", n)
	}
	// After the end it still answers the finished termination, unchanged.
	again, err := h.m.InitiateShutdown(ctxT(t), "sb-1", &tartarus.ShutdownOptions{Reason: tartarus.ReasonTimeout})
	if err != nil || again.Phase != tartarus.PhaseCompleted || again.Reason != st.Reason {
		t.Errorf("again: %+v, %v", again, err)
	}
	if n := strings.Count(strings.Join(h.target.ops(), ","), "kill"); n != 1 {
		t.Errorf("killed %d times", n)
	}
}

// A crash in each phase: the first manager stops where a step blocks, a
// second one over the same journal resumes and finishes from the phase
// recorded, repeating only that step.
func TestResumeAfterCrashInEachPhase(t *testing.T) {
	tests := []struct {
		phase   tartarus.TerminationPhase
		block   string // target op that hangs in the first manager ("" = none)
		hook    bool   // a pre-mortem hook hangs instead
		wantOps []string
	}{
		{phase: tartarus.PhaseInitiated, hook: true, wantOps: []string{"signal", "checkpoint", "kill", "release"}},
		{phase: tartarus.PhaseSignaled, block: "signal", wantOps: []string{"signal", "checkpoint", "kill", "release"}},
		{phase: tartarus.PhaseDraining, block: "active", wantOps: []string{"checkpoint", "kill", "release"}},
		{phase: tartarus.PhaseCheckpointing, block: "checkpoint", wantOps: []string{"checkpoint", "kill", "release"}},
		{phase: tartarus.PhaseTerminating, block: "kill", wantOps: []string{"kill", "release"}},
	}
	for _, tc := range tests {
		t.Run(string(tc.phase), func(t *testing.T) {
			journal := &MemJournal{}
			h1 := newHarness(t, journal, nil)
			h1.target.block = tc.block
			hookCalls := 0
			var mu sync.Mutex
			hook := func(ctx context.Context, id string, r tartarus.TerminationReason) error {
				mu.Lock()
				hookCalls++
				n := hookCalls
				mu.Unlock()
				if tc.hook && n == 1 {
					h1.target.blocked <- "hook"
					<-ctx.Done()
				}
				return nil
			}
			h1.m.AddPreMortem("evidence", time.Hour, hook)
			st, err := h1.m.InitiateShutdown(ctxT(t), "sb-1", &tartarus.ShutdownOptions{GracePeriod: time.Minute, CreateCheckpoint: true, Reason: tartarus.ReasonNodeDrain})
			if err != nil {
				t.Fatal(err)
			}
			<-h1.target.blocked
			h1.m.Close() // the crash
			rec, err := journal.Get(ctxT(t), "sb-1")
			if err != nil || rec.Phase != tc.phase {
				t.Fatalf("journal after crash: %+v, %v; want phase %s", rec, err, tc.phase)
			}

			h2 := newHarness(t, journal, nil)
			h2.clk.Advance(5 * time.Second) // the restart took a while
			h2.m.AddPreMortem("evidence", time.Hour, hook)
			if n, err := h2.m.Resume(ctxT(t)); err != nil || n != 1 {
				t.Fatalf("resume: %d, %v", n, err)
			}
			final := wait(t, h2.m, "sb-1")
			if final.Phase != tartarus.PhaseCompleted || final.Reason != tartarus.ReasonNodeDrain || !final.InitiatedAt.Equal(st.InitiatedAt) {
				t.Fatalf("final %+v", final)
			}
			if got := h2.target.ops(); !equal(got, tc.wantOps) {
				t.Errorf("second manager's calls %v, want %v", got, tc.wantOps)
			}
			if ck, _ := h2.target.callAt("checkpoint"); !ck.IsZero() {
				c, err := journal.GetCheckpoint(ctxT(t), st.CheckpointID)
				if err != nil || c.SandboxID != "sb-1" {
					t.Errorf("checkpoint %s after resume: %+v, %v", st.CheckpointID, c, err)
				}
			}
			wantHooks := 1
			if tc.hook {
				wantHooks = 2
			}
			if hookCalls != wantHooks {
				t.Errorf("pre-mortem hook ran %d times, want %d", hookCalls, wantHooks)
			}
			if pending, _ := h2.m.ListPending(ctxT(t)); len(pending) != 0 {
				t.Errorf("still pending: %v", pending)
			}
		})
	}
}

// A termination found in the journal but not yet resumed is adopted by
// InitiateShutdown rather than started anew.
func TestInitiateAdoptsAJournalRecord(t *testing.T) {
	journal := &MemJournal{}
	h1 := newHarness(t, journal, nil)
	h1.target.block = "kill"
	if _, err := h1.m.InitiateShutdown(ctxT(t), "sb-1", &tartarus.ShutdownOptions{Reason: tartarus.ReasonTimeout}); err != nil {
		t.Fatal(err)
	}
	<-h1.target.blocked
	h1.m.Close()
	h2 := newHarness(t, journal, nil)
	st, err := h2.m.InitiateShutdown(ctxT(t), "sb-1", &tartarus.ShutdownOptions{Reason: tartarus.ReasonUserRequest, GracePeriod: time.Minute})
	if err != nil || st.Reason != tartarus.ReasonTimeout || st.Phase != tartarus.PhaseTerminating {
		t.Fatalf("adopted %+v, %v", st, err)
	}
	if final := wait(t, h2.m, "sb-1"); final.Phase != tartarus.PhaseCompleted {
		t.Fatalf("final %+v", final)
	}
}

func TestHookHangingIsCutAtItsBudget(t *testing.T) {
	h := newHarness(t, nil, nil)
	released := make(chan struct{})
	h.m.AddPreMortem("hangs", 3*time.Second, func(ctx context.Context, id string, r tartarus.TerminationReason) error {
		<-released // ignores its context: must be abandoned, not awaited
		return nil
	})
	var postCtxErr error
	postDone := make(chan struct{})
	h.m.AddPostMortem("hangs-too", 2*time.Second, func(ctx context.Context, id string, code int, d time.Duration) error {
		<-ctx.Done()
		postCtxErr = ctx.Err()
		close(postDone)
		return ctx.Err()
	})
	defer close(released)
	if _, err := h.m.InitiateShutdown(ctxT(t), "sb-1", &tartarus.ShutdownOptions{GracePeriod: 10 * time.Second, Reason: tartarus.ReasonPolicyViolation}); err != nil {
		t.Fatal(err)
	}
	waitTickers(t, h.clk, 1)
	h.clk.Advance(2 * time.Second)
	if st, _ := h.m.Status(ctxT(t), "sb-1"); st.Phase != tartarus.PhaseInitiated {
		t.Fatalf("phase %s before the budget ran out", st.Phase)
	}
	h.clk.Advance(time.Second)
	waitPhase(t, h.m, "sb-1", tartarus.PhaseCompleted)
	if at, _ := h.target.callAt("signal"); !at.Equal(t0.Add(3 * time.Second)) {
		t.Errorf("signalled at %v, want at the hook's budget", at)
	}
	waitTickers(t, h.clk, 1)
	h.clk.Advance(2 * time.Second)
	<-postDone
	if !errors.Is(postCtxErr, context.Canceled) {
		t.Errorf("post-mortem hook's context: %v", postCtxErr)
	}
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(h.m.Collector().hookFailures.WithLabelValues("post_mortem", "hangs-too")) != 1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := testutil.ToFloat64(h.m.Collector().hookFailures.WithLabelValues("pre_mortem", "hangs")); n != 1 {
		t.Errorf("pre-mortem failures %v", n)
	}
	if n := testutil.ToFloat64(h.m.Collector().hookFailures.WithLabelValues("post_mortem", "hangs-too")); n != 1 {
		t.Errorf("post-mortem failures %v", n)
	}
}

func TestPostMortemHookSeesTheEnd(t *testing.T) {
	h := newHarness(t, nil, nil)
	type seen struct {
		code int
		d    time.Duration
	}
	got := make(chan seen, 1)
	h.m.AddPostMortem("record", 0, func(ctx context.Context, id string, code int, d time.Duration) error {
		got <- seen{code, d}
		return nil
	})
	h.target.setActive(1)
	if _, err := h.m.InitiateShutdown(ctxT(t), "sb-1", &tartarus.ShutdownOptions{GracePeriod: 4 * time.Second}); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, h.m, "sb-1", tartarus.PhaseDraining)
	waitTickers(t, h.clk, 2)
	h.clk.Advance(4 * time.Second)
	if s := <-got; s.code != exitKilled || s.d != 4*time.Second {
		t.Errorf("post-mortem saw %+v", s)
	}
}

func TestShutdownOptionsValidation(t *testing.T) {
	h := newHarness(t, nil, nil)
	tests := []struct {
		name string
		opts tartarus.ShutdownOptions
		want []string
	}{
		{"unknown reason", tartarus.ShutdownOptions{Reason: "bored"}, []string{`reason "bored"`}},
		{"unknown signal", tartarus.ShutdownOptions{Signal: "SIGSTOP"}, []string{`signal "SIGSTOP"`}},
		{"negative grace", tartarus.ShutdownOptions{GracePeriod: -time.Second}, []string{"grace period -1s"}},
		{"grace too long", tartarus.ShutdownOptions{GracePeriod: 2 * time.Hour}, []string{"grace period 2h0m0s"}},
		{"ftp callback", tartarus.ShutdownOptions{CallbackURL: "ftp://example.com/x"}, []string{`scheme "ftp"`}},
		{"credentials in callback", tartarus.ShutdownOptions{CallbackURL: "https://u:p@example.com/"}, []string{"credentials"}},
		{"every problem at once", tartarus.ShutdownOptions{Reason: "x", Signal: "y", GracePeriod: -1, CheckpointTTL: -1},
			[]string{`reason "x"`, `signal "y"`, "grace period", "checkpoint ttl"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.m.InitiateShutdown(ctxT(t), "sb-1", &tc.opts)
			if !errors.Is(err, tartarus.ErrInvalid) {
				t.Fatalf("err %v, want ErrInvalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	if _, err := h.m.InitiateShutdown(ctxT(t), "", nil); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("empty id: %v", err)
	}
	if _, err := h.m.InitiateShutdown(ctxT(t), "sb-1", &tartarus.ShutdownOptions{CallbackURL: "https://example.com/"}); !errors.Is(err, tartarus.ErrFailedPrecondition) {
		t.Errorf("callback without a key: %v", err)
	}
	if _, err := h.journal.Get(ctxT(t), "sb-1"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("bad input changed the journal: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	err := (&Config{Webhooks: []Webhook{{URL: "gopher://x", When: "later", Budget: -1}}, AllowHosts: []string{"10.0.0.0/99"}, Retry: RetryPolicy{Attempts: -1}}).Validate()
	for _, w := range []string{"Target is required", "Journal is required", "WebhookKey", "scheme", `when "later"`, "budget", "Retry", "allow hosts"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("Validate() = %v, lacks %q", err, w)
		}
	}
}

func TestLiveCheckpointAndCollection(t *testing.T) {
	h := newHarness(t, nil, nil)
	ck, err := h.m.CheckpointFor(ctxT(t), "sb-1", "acme", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if ck.Tenant != "acme" || !ck.ExpiresAt.Equal(t0.Add(time.Hour)) || ck.Size != 4096 || ck.Reason != "" {
		t.Errorf("checkpoint %+v", ck)
	}
	if got := h.target.ops(); !equal(got, []string{"checkpoint"}) {
		t.Errorf("calls %v: a live checkpoint must not stop the sandbox", got)
	}
	other, err := h.m.Checkpoint(ctxT(t), "sb-2")
	if err != nil {
		t.Fatal(err)
	}
	if list, _ := h.m.ListCheckpoints(ctxT(t), "acme"); len(list) != 1 || list[0].ID != ck.ID {
		t.Errorf("acme's checkpoints %v", list)
	}
	h.clk.Advance(time.Hour)
	n, err := h.m.CollectCheckpoints(ctxT(t))
	if err != nil || n != 1 {
		t.Fatalf("collected %d, %v", n, err)
	}
	if _, err := h.m.GetCheckpoint(ctxT(t), ck.ID); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("expired checkpoint still there: %v", err)
	}
	if _, err := h.m.GetCheckpoint(ctxT(t), other.ID); err != nil {
		t.Errorf("unexpired checkpoint gone: %v", err)
	}
	if len(h.target.removed) != 1 || h.target.removed[0] != ck.SnapshotRef {
		t.Errorf("removed snapshots %v", h.target.removed)
	}
	// Refused while a termination is under way or done.
	if _, err := h.m.InitiateShutdown(ctxT(t), "sb-3", nil); err != nil {
		t.Fatal(err)
	}
	wait(t, h.m, "sb-3")
	if _, err := h.m.Checkpoint(ctxT(t), "sb-3"); !errors.Is(err, tartarus.ErrFailedPrecondition) {
		t.Errorf("checkpoint of a terminated sandbox: %v", err)
	}
}
