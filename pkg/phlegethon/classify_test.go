package phlegethon

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func newClassifier(t *testing.T, learn LearnConfig) *Classifier {
	t.Helper()
	c, err := NewClassifier(nil, learn)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The seed classifier's thresholds, at and around every boundary.
func TestThresholds(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		cpus float64
		want HeatLevel
	}{
		{0, 0, HeatCold},
		{10 * time.Second, 1, HeatCold}, // the seed's comment says cold is < 10s; the code's boundary is 30s
		{30 * time.Second, 1, HeatCold},
		{30*time.Second + 1, 1, HeatWarm},
		{2 * time.Minute, 1.9, HeatWarm},
		{2*time.Minute + 1, 1, HeatHot},
		{0, 2, HeatHot},
		{10 * time.Minute, 3.9, HeatHot},
		{10*time.Minute + 1, 0, HeatInferno},
		{0, 4, HeatInferno},
		{24 * time.Hour, 64, HeatInferno},
	} {
		if got := Thresholds(tc.d, tc.cpus); got != tc.want {
			t.Errorf("Thresholds(%s, %v) = %s, want %s", tc.d, tc.cpus, got, tc.want)
		}
	}
}

func TestClassifyOrder(t *testing.T) {
	c := newClassifier(t, LearnConfig{})
	if err := c.SetTemplateHint("python", HeatWarm); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		req        SandboxRequest
		heat       HeatLevel
		class      string
		rule       Rule
		raisedFrom HeatLevel
		reason     string
	}{
		{"nothing asked is cold", SandboxRequest{TemplateID: "base"}, HeatCold, "ember", RuleThresholds, "", "30s or less and under 2 CPUs is cold"},
		{"duration makes warm", SandboxRequest{TemplateID: "base", MaxDuration: time.Minute}, HeatWarm, "flame", RuleThresholds, "", "max duration 1m0s"},
		{"2 CPUs makes hot", SandboxRequest{TemplateID: "base", CPUCores: 2}, HeatHot, "blaze", RuleThresholds, "", "2 CPUs"},
		{"4 CPUs makes inferno", SandboxRequest{TemplateID: "base", CPUCores: 4}, HeatInferno, "inferno", RuleThresholds, "", "inferno"},
		{"11 minutes makes inferno", SandboxRequest{MaxDuration: 11 * time.Minute}, HeatInferno, "inferno", RuleThresholds, "", ""},
		{"hint beats template and thresholds", SandboxRequest{TemplateID: "python", HeatHint: HeatHot, MaxDuration: time.Second}, HeatHot, "blaze", RuleHint, "", "heat_hint is hot"},
		{"template hint beats thresholds", SandboxRequest{TemplateID: "python", CPUCores: 1}, HeatWarm, "flame", RuleTemplateHint, "", "template python is configured warm"},
		{"class by name", SandboxRequest{ResourceClass: "blaze"}, HeatHot, "blaze", RuleClass, "", "named class blaze"},
		{"memory raises cold to warm", SandboxRequest{MemoryMB: 1024}, HeatWarm, "flame", RuleThresholds, HeatCold, "raised to warm because 1024 MiB does not fit ember's 512 MiB"},
		{"memory raises a template hint", SandboxRequest{TemplateID: "python", MemoryMB: 4096}, HeatHot, "blaze", RuleTemplateHint, HeatWarm, "4096 MiB does not fit flame's 2048 MiB"},
		{"a GPU raises to inferno", SandboxRequest{GPUCount: 1}, HeatInferno, "inferno", RuleThresholds, HeatCold, "1 GPU does not fit ember's 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := c.Classify(&tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if e.Heat != tc.heat || e.Class != tc.class || e.Rule != tc.rule || e.RaisedFrom != tc.raisedFrom {
				t.Errorf("got %+v", e)
			}
			if !strings.Contains(e.Reason, tc.reason) {
				t.Errorf("reason %q lacks %q", e.Reason, tc.reason)
			}
		})
	}
}

func TestClassifyRefuses(t *testing.T) {
	c := newClassifier(t, LearnConfig{})
	for _, tc := range []struct {
		name string
		req  SandboxRequest
		want string
	}{
		{"bad hint", SandboxRequest{HeatHint: "lukewarm"}, `heat_hint "lukewarm"`},
		{"hint too small", SandboxRequest{HeatHint: HeatCold, CPUCores: 2}, "heat_hint cold: 2 CPUs does not fit ember's 1; ask for a hotter heat"},
		{"hint too short", SandboxRequest{HeatHint: HeatCold, MaxDuration: time.Minute}, "max duration 1m0s is beyond ember's 30s"},
		{"unknown class", SandboxRequest{ResourceClass: "plasma"}, `resource_class "plasma": no such class`},
		{"class contradicts hint", SandboxRequest{ResourceClass: "ember", HeatHint: HeatHot}, "contradicts resource_class ember, which is cold"},
		{"class too small", SandboxRequest{ResourceClass: "ember", MemoryMB: 1024}, "resource_class ember: 1024 MiB"},
		{"nothing holds it", SandboxRequest{CPUCores: 64}, "no resource class holds the request: 64 CPUs does not fit inferno's 8"},
		{"negative", SandboxRequest{CPUCores: -1}, "must not be negative"},
		{"too long", SandboxRequest{MaxDuration: 8 * 24 * time.Hour}, "max_duration_s 691200"},
		{"fractional seconds", SandboxRequest{MaxDuration: 1500 * time.Millisecond}, "whole seconds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Classify(&tc.req)
			if !errors.Is(err, tartarus.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want invalid with %q", err, tc.want)
			}
		})
	}
}

// An injected history moves a template's hint: below MinSamples the
// operator's hint holds; from then on the decay-weighted median of the runs'
// heats decides, and newer runs outweigh older ones.
func TestLearningMovesTemplateHint(t *testing.T) {
	c := newClassifier(t, LearnConfig{MinSamples: 5, Window: 8, Decay: 0.5})
	if err := c.SetTemplateHint("etl", HeatCold); err != nil {
		t.Fatal(err)
	}
	run := func(d time.Duration, cpu float64, mem int64) HeatObservation {
		return HeatObservation{TemplateID: "etl", ActualDuration: d, PeakCPU: cpu, PeakMemory: mem, Timestamp: t0}
	}
	explain := func() Explanation {
		t.Helper()
		e, err := c.ExplainTemplate("etl")
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	for range 4 {
		if err := c.Observe(run(5*time.Minute, 1, 100<<20)); err != nil {
			t.Fatal(err)
		}
	}
	if e := explain(); e.Heat != HeatCold || e.Rule != RuleTemplateHint {
		t.Fatalf("4 runs (below min samples): %+v", e)
	}
	if err := c.Observe(run(5*time.Minute, 1, 100<<20)); err != nil {
		t.Fatal(err)
	}
	e := explain()
	if e.Heat != HeatHot || e.Rule != RuleLearned || !strings.Contains(e.Reason, "ran 5 times") || !strings.Contains(e.Reason, "configured hint cold is overridden") {
		t.Fatalf("5 hot runs: %+v", e)
	}
	// Three quick runs: with decay 0.5 the newest three weigh 1+0.5+0.25 =
	// 1.75 of 1.94 total, so the median is cold.
	for range 3 {
		if err := c.Observe(run(5*time.Second, 0.2, 10<<20)); err != nil {
			t.Fatal(err)
		}
	}
	if e := explain(); e.Heat != HeatCold || e.Rule != RuleLearned {
		t.Fatalf("after 3 quick runs: %+v", e)
	}
	// Peak memory counts: quick runs that needed 3 GiB are hot (flame holds 2 GiB).
	for range 3 {
		if err := c.Observe(run(time.Second, 0.1, 3<<30)); err != nil {
			t.Fatal(err)
		}
	}
	if e := explain(); e.Heat != HeatHot {
		t.Fatalf("after 3 big-memory runs: %+v", e)
	}
	if n := len(c.History("etl")); n != 8 {
		t.Errorf("window keeps %d runs, want 8", n)
	}
	// An explicit hint still wins over what was learned.
	if e, _ := c.Classify(&SandboxRequest{TemplateID: "etl", HeatHint: HeatCold}); e.Rule != RuleHint {
		t.Errorf("hint after learning: %+v", e)
	}
}

// One outlier does not move a learned hint: it is a median, not a mean.
func TestLearningIgnoresOutlier(t *testing.T) {
	c := newClassifier(t, LearnConfig{MinSamples: 3})
	for i := range 10 {
		d := 10 * time.Second
		if i == 9 {
			d = 20 * time.Hour
		}
		if err := c.Observe(HeatObservation{TemplateID: "web", ActualDuration: d, PeakCPU: 0.5}); err != nil {
			t.Fatal(err)
		}
	}
	if e, _ := c.ExplainTemplate("web"); e.Heat != HeatCold || e.Rule != RuleLearned {
		t.Errorf("got %+v", e)
	}
}

func TestObserveRefusesHostileStats(t *testing.T) {
	c := newClassifier(t, LearnConfig{})
	nan := 0.0
	nan = nan / nan
	for _, o := range []HeatObservation{
		{TemplateID: "", ActualDuration: time.Second},
		{TemplateID: "../x", ActualDuration: time.Second},
		{TemplateID: "t", ActualDuration: -1},
		{TemplateID: "t", PeakCPU: -1},
		{TemplateID: "t", PeakCPU: nan},
		{TemplateID: "t", PeakMemory: -5},
	} {
		if err := c.Observe(o); !errors.Is(err, tartarus.ErrInvalid) {
			t.Errorf("%+v: %v", o, err)
		}
	}
	if len(c.History("t")) != 0 {
		t.Error("a refused observation was kept")
	}
}

func TestLearnConfigValidate(t *testing.T) {
	err := LearnConfig{MinSamples: -1, Window: -2, Decay: 2}.Validate()
	for _, want := range []string{"min_samples -1", "window -2", "decay 2"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v lacks %q", err, want)
		}
	}
	if err := (LearnConfig{MinSamples: 9, Window: 4}).Validate(); err == nil {
		t.Error("min samples above window accepted")
	}
}
