package container

import (
	"context"
	"errors"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// testBase is a Base over a probe and an exec that record what they were
// asked; sandbox "run" runs, "paused" is paused, anything else is unknown.
type testBase struct {
	*Base
	clk    *clock.Fake
	probes int
	avail  bool
	keep   bool
	ran    [][]string
	busy   []bool // whether the sandbox counted as busy during each command
}

func newTestBase() *testBase {
	tb := &testBase{clk: clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), avail: true, keep: true}
	tb.Base = NewBase(BaseConfig{Name: "test", Clock: tb.clk, Probe: tb.probe, Open: tb.open})
	return tb
}

func (tb *testBase) probe(context.Context) (*tartarus.Fingerprint, bool) {
	tb.probes++
	fp := &tartarus.Fingerprint{Runtime: "test", Available: tb.avail, MaxCPUs: 2, MaxMemoryMB: 1024,
		Details: map[string]string{"probe": "yes"}}
	if !tb.avail {
		fp.Reason = "daemon down"
	}
	return fp, tb.keep
}

func (tb *testBase) open(_ context.Context, id string) (ExecFunc, error) {
	switch id {
	case "run":
	case "paused":
		return nil, RequireRunning(id, "paused")
	default:
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	}
	return func(_ context.Context, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
		tb.ran = append(tb.ran, req.Cmd)
		tb.busy = append(tb.busy, tb.Activity.IdleSince(id) == nil)
		if req.Stdout != nil {
			// Enough of the read script's answer for ReadFile.
			_, _ = io.WriteString(req.Stdout, "Ohello")
		}
		return &tartarus.ExecResult{}, nil
	}, nil
}

func TestBaseFingerprint(t *testing.T) {
	ctx := context.Background()
	tb := newTestBase()
	fp, err := tb.Fingerprint(ctx)
	if err != nil || !fp.Available {
		t.Fatalf("Fingerprint: %+v %v", fp, err)
	}
	fp.Details["probe"] = "changed by the caller"
	fp2, _ := tb.Fingerprint(ctx)
	if tb.probes != 1 {
		t.Errorf("probed %d times, want 1 (kept)", tb.probes)
	}
	if fp2.Details["probe"] != "yes" {
		t.Errorf("a caller's change reached the kept fingerprint: %v", fp2.Details)
	}

	down := newTestBase()
	down.avail, down.keep = false, false
	for range 2 {
		if fp, _ := down.Fingerprint(ctx); fp.Available || fp.Reason == "" {
			t.Errorf("fingerprint %+v: want unavailable with a reason", fp)
		}
	}
	if down.probes != 2 {
		t.Errorf("probed %d times, want 2 (not kept)", down.probes)
	}
	cfg := &tartarus.VMConfig{ID: "a", Image: &tartarus.Image{Name: "base", RootFS: "/x"}, CPUs: 1, MemoryMB: 128}
	if err := down.CheckCreate(ctx, cfg); !errors.Is(err, tartarus.ErrUnavailable) || !strings.Contains(err.Error(), "daemon down") {
		t.Errorf("CheckCreate on an unavailable runtime: %v, want ErrUnavailable with the reason", err)
	}
	if err := tb.CheckCreate(ctx, cfg); err != nil {
		t.Errorf("CheckCreate: %v", err)
	}
	cfg.CPUs = 3
	if err := tb.CheckCreate(ctx, cfg); !errors.Is(err, tartarus.ErrResourceExhausted) {
		t.Errorf("CheckCreate over the limit: %v, want ErrResourceExhausted", err)
	}
}

func TestBaseExecSignalFiles(t *testing.T) {
	ctx := context.Background()
	tb := newTestBase()
	if _, err := tb.Exec(ctx, "run", &tartarus.ExecRequest{Cmd: []string{"true"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Exec(ctx, "nope", &tartarus.ExecRequest{Cmd: []string{"true"}}); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("Exec in an unknown sandbox: %v, want ErrNotFound", err)
	}
	if err := tb.Signal(ctx, "run", syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := tb.Signal(ctx, "run", syscall.Signal(99)); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("Signal 99: %v, want ErrInvalid", err)
	}
	if err := tb.Signal(ctx, "paused", syscall.SIGTERM); !errors.Is(err, tartarus.ErrFailedPrecondition) {
		t.Errorf("Signal to a paused sandbox: %v, want ErrFailedPrecondition", err)
	}
	rc, err := tb.ReadFile(ctx, "run", "/etc/hostname")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	if tb.Activity.IdleSince("run") != nil {
		t.Error("sandbox idle while a read is open")
	}
	rc.Close()
	if string(b) != "hello" || tb.Activity.IdleSince("run") == nil {
		t.Errorf("read %q; idle after close: %v", b, tb.Activity.IdleSince("run"))
	}
	if len(tb.ran) != 3 {
		t.Fatalf("commands run: %q", tb.ran)
	}
	if !tb.busy[0] || tb.busy[1] {
		t.Errorf("busy during exec %v, during signal %v; want true, false", tb.busy[0], tb.busy[1])
	}
	if got := strings.Join(tb.ran[1], " "); got != "sh -c "+KillAllScript+" sh TERM" {
		t.Errorf("signal ran %q", got)
	}
}

func TestBaseFillStats(t *testing.T) {
	tb := newTestBase()
	start := tb.clk.Now()
	var st tartarus.Stats
	tb.FillStats("run", &st, 1e9)
	if st.CPUPercent != 0 || !st.LastActivityAt.Equal(start) {
		t.Errorf("first sample %+v: want 0 %% and activity at %v", st, start)
	}
	tb.clk.Advance(2 * time.Second)
	tb.FillStats("run", &st, 2e9) // one CPU second in two seconds
	if st.CPUPercent != 50 {
		t.Errorf("CPU %v %%, want 50", st.CPUPercent)
	}
	tb.Forget("run")
	st = tartarus.Stats{}
	tb.FillStats("run", &st, 5e9)
	if st.CPUPercent != 0 {
		t.Errorf("CPU %v %% after Forget, want 0 (a new first sample)", st.CPUPercent)
	}
}

func TestBasePauseResume(t *testing.T) {
	tests := []struct {
		name    string
		pause   bool
		state   string
		wantDo  bool
		wantErr error
		text    string
	}{
		{name: "pause running", pause: true, state: "running", wantDo: true},
		{name: "pause paused", pause: true, state: "paused"},
		{name: "pause stopped", pause: true, state: "stopped", wantErr: tartarus.ErrFailedPrecondition, text: "pause x: sandbox is stopped"},
		{name: "resume paused", state: "paused", wantDo: true},
		{name: "resume running", state: "running"},
		{name: "resume never started", state: "", wantErr: tartarus.ErrFailedPrecondition, text: "resume x: sandbox is not started"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := newTestBase()
			did := false
			err := tb.PauseResume("x", tt.pause, tt.state, func() error { did = true; return nil })
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("PauseResume: %v, want %v", err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), tt.text) {
				t.Errorf("error %q, want it to say %q", err, tt.text)
			}
			if did != tt.wantDo {
				t.Errorf("did the call: %v, want %v", did, tt.wantDo)
			}
		})
	}
	tb := newTestBase()
	if err := tb.PauseResume("x", true, "running", func() error { return errors.New("freezer") }); err == nil || !strings.Contains(err.Error(), "pause x: freezer") {
		t.Errorf("failed pause: %v", err)
	}
}

func TestRequireRunning(t *testing.T) {
	for state, want := range map[string]string{"running": "", "paused": "sandbox x is paused",
		"": "sandbox x is not started", "created": "sandbox x is created"} {
		err := RequireRunning("x", state)
		if want == "" && err != nil || want != "" && (!errors.Is(err, tartarus.ErrFailedPrecondition) || !strings.HasPrefix(err.Error(), want)) {
			t.Errorf("RequireRunning(%q) = %v, want %q", state, err, want)
		}
	}
}

func TestBaseAdopt(t *testing.T) {
	tb := newTestBase()
	list := []*tartarus.Instance{{ID: "a", State: tartarus.InstanceRunning}, {ID: "b", State: tartarus.InstanceStopped},
		{ID: "c", State: tartarus.InstancePaused}, {ID: "d", State: tartarus.InstanceCreated}}
	var destroyed []string
	listed := func(context.Context) ([]*tartarus.Instance, error) { return list, nil }
	adopted, err := tb.Adopt(context.Background(), listed, func(_ context.Context, id string) error {
		destroyed = append(destroyed, id)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, in := range adopted {
		ids = append(ids, in.ID)
	}
	if strings.Join(ids, ",") != "a,c" || strings.Join(destroyed, ",") != "b,d" {
		t.Errorf("adopted %v, destroyed %v; want a,c and b,d", ids, destroyed)
	}
}

func TestWait(t *testing.T) {
	ctx := context.Background()
	done := make(chan int, 1)
	done <- 7
	if v, timedOut, err := Wait(ctx, 0, done, func() { t.Error("killed a command that ended") }); v != 7 || timedOut || err != nil {
		t.Errorf("Wait = %v, %v, %v", v, timedOut, err)
	}

	// A command that ends only when killed: by the timeout, then by ctx.
	hung := func() (chan int, func()) {
		c := make(chan int, 1)
		return c, func() { c <- 137 }
	}
	c, kill := hung()
	if v, timedOut, err := Wait(ctx, time.Millisecond, c, kill); v != 137 || !timedOut || err != nil {
		t.Errorf("Wait with a timeout = %v, %v, %v; want 137, timed out", v, timedOut, err)
	}
	c, kill = hung()
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := Wait(cctx, 0, c, kill); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait with a cancelled ctx: %v, want context.Canceled", err)
	}
}

func TestExitResult(t *testing.T) {
	tests := []struct {
		code      int
		timedOut  bool
		wantCode  int
		wantSig   string
		wantTimed bool
	}{
		{code: 0, wantCode: 0},
		{code: 3, wantCode: 3},
		{code: 128 + 15, wantCode: 143, wantSig: syscall.SIGTERM.String()},
		{code: 0, timedOut: true, wantCode: 137, wantSig: syscall.SIGKILL.String(), wantTimed: true},
	}
	for _, tt := range tests {
		res := ExitResult(tt.code, tt.timedOut, time.Second)
		if res.ExitCode != tt.wantCode || res.Signal != tt.wantSig || res.TimedOut != tt.wantTimed || res.Duration != time.Second {
			t.Errorf("ExitResult(%d, %v) = %+v", tt.code, tt.timedOut, res)
		}
	}
}

func TestCheckExec(t *testing.T) {
	if cwd, err := CheckExec(&tartarus.ExecRequest{Cmd: []string{"ls"}}); err != nil || cwd != "/" {
		t.Errorf("CheckExec = %q, %v; want /", cwd, err)
	}
	if cwd, err := CheckExec(&tartarus.ExecRequest{Cmd: []string{"ls"}, Cwd: "/tmp"}); err != nil || cwd != "/tmp" {
		t.Errorf("CheckExec = %q, %v; want /tmp", cwd, err)
	}
	for _, req := range []*tartarus.ExecRequest{{}, {Cmd: []string{"ls"}, Env: map[string]string{"A=B": "c"}}} {
		if _, err := CheckExec(req); !errors.Is(err, tartarus.ErrInvalid) {
			t.Errorf("CheckExec(%+v): %v, want ErrInvalid", req, err)
		}
	}
}

func TestLabels(t *testing.T) {
	cfg := &tartarus.VMConfig{ID: "sb", Image: &tartarus.Image{Name: "base"}, CPUs: 2, MemoryMB: 256}
	in := LabeledInstance("sb", SandboxLabels("docker", cfg))
	if in.ID != "sb" || in.Template != "base" || in.CPUs != 2 || in.MemoryMB != 256 {
		t.Errorf("instance from labels %+v", in)
	}
	cfg.Template = "python"
	if l := SandboxLabels("docker", cfg); l[LabelTemplate] != "python" || l[LabelRuntime] != "docker" {
		t.Errorf("labels %v", l)
	}
	for state, want := range map[string]tartarus.InstanceState{"running": tartarus.InstanceRunning,
		"paused": tartarus.InstancePaused, "pausing": tartarus.InstancePaused, "": tartarus.InstanceCreated,
		"creating": tartarus.InstanceCreated, "created": tartarus.InstanceCreated, "exited": tartarus.InstanceStopped,
		"stopped": tartarus.InstanceStopped, "unknown": tartarus.InstanceStopped} {
		if got := InstanceState(state); got != want {
			t.Errorf("InstanceState(%q) = %s, want %s", state, got, want)
		}
	}
}
