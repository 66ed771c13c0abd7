package hecatoncheir

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/fake"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// A quarantined sandbox still runs commands (the API admits only
// examiners), outlives its own timeout, cannot hibernate or pause, and goes
// back to running on release; the exec log records what ran.
func TestQuarantinedSandbox(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, fake.Config{})
	sb, err := e.agent.Create(ctx, "acme", &tartarus.CreateRequest{TimeoutS: 60})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.agent.Exec(ctx, sb.ID, &tartarus.ExecRequest{Cmd: []string{"echo", "hi"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.agent.Pause(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	got, err := e.agent.SetQuarantined(ctx, sb.ID, true)
	if err != nil || got.State != tartarus.StateQuarantined {
		t.Fatalf("quarantine a paused sandbox: %+v %v", got, err)
	}
	if _, err := e.agent.SetQuarantined(ctx, sb.ID, true); err != nil {
		t.Fatalf("twice: %v", err)
	}
	if _, err := e.agent.Exec(ctx, sb.ID, &tartarus.ExecRequest{Cmd: []string{"true"}}); err != nil {
		t.Fatalf("exec in a quarantined sandbox: %v", err)
	}
	if _, err := e.agent.Pause(ctx, sb.ID); !errors.Is(err, tartarus.ErrFailedPrecondition) {
		t.Fatalf("pause of a quarantined sandbox: %v", err)
	}
	e.clock.Advance(2 * time.Minute)
	if done, err := e.agent.Expire(ctx); err != nil || len(done) != 0 {
		t.Fatalf("a quarantined sandbox expired: %v %v", done, err)
	}
	got, err = e.agent.SetQuarantined(ctx, sb.ID, false)
	if err != nil || got.State != tartarus.StateRunning {
		t.Fatalf("release: %+v %v", got, err)
	}
	hist := e.agent.ExecHistory(sb.ID)
	if len(hist) != 2 || !slices.Equal(hist[0].Cmd, []string{"echo", "hi"}) || hist[1].ExitCode != 0 {
		t.Fatalf("exec history: %+v", hist)
	}
	if done, err := e.agent.Expire(ctx); err != nil || !slices.Equal(done, []string{sb.ID}) {
		t.Fatalf("released sandbox past its timeout: %v %v", done, err)
	}
}
