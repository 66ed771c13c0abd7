package phlegethon

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Rule names what chose a heat level.
type Rule string

// The rules, in the order the classifier tries them.
const (
	RuleClass        Rule = "resource_class" // the create named a class
	RuleHint         Rule = "hint"           // the create's heat_hint
	RuleLearned      Rule = "learned"        // the template's runs
	RuleTemplateHint Rule = "template_hint"  // the operator's hint for the template
	RuleThresholds   Rule = "thresholds"     // the request's duration and CPUs
)

// Explanation is a classification and why.
type Explanation struct {
	Heat  HeatLevel `json:"heat"`
	Class string    `json:"class"`
	Rule  Rule      `json:"rule"`
	// RaisedFrom is the level the rule chose when the class of that level
	// could not hold the request and a hotter one was taken; "" otherwise.
	RaisedFrom HeatLevel `json:"raised_from,omitempty"`
	// Reason says it in a sentence.
	Reason string `json:"reason"`
}

// Thresholds is the seed classifier's third rule: a request lasting more
// than 10 minutes or asking 4 CPUs or more is inferno; more than 2 minutes
// or 2 CPUs, hot; more than 30 seconds, warm; anything else cold. The seed's
// comments (cold "< 10s") disagree with its code; the code decides, and it
// agrees with the default classes' maximum durations (ember's 30 s is
// exactly the cold boundary). CPUs are fractional for observations.
func Thresholds(d time.Duration, cpus float64) HeatLevel {
	switch {
	case d > 10*time.Minute || cpus >= 4:
		return HeatInferno
	case d > 2*time.Minute || cpus >= 2:
		return HeatHot
	case d > 30*time.Second:
		return HeatWarm
	}
	return HeatCold
}

// LearnConfig is how observations move a template's hint.
type LearnConfig struct {
	// MinSamples is how many runs a template needs before its runs decide
	// its heat; 0: DefaultMinSamples.
	MinSamples int
	// Window is how many of the newest runs are kept; 0: DefaultWindow.
	Window int
	// Decay is the weight of each run relative to the next newer one, in
	// (0, 1]; 0: DefaultDecay.
	Decay float64
}

// Learning defaults: a template's last 32 runs, each weighing 0.9 of the
// next newer, decide its heat once there are 5.
const (
	DefaultMinSamples = 5
	DefaultWindow     = 32
	DefaultDecay      = 0.9
)

// Validate returns every problem of c.
func (c LearnConfig) Validate() error {
	var errs []error
	if c.MinSamples < 0 {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "learn min_samples %d: must not be negative", c.MinSamples))
	}
	if c.Window < 0 {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "learn window %d: must not be negative", c.Window))
	}
	if c.Decay < 0 || c.Decay > 1 || math.IsNaN(c.Decay) {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "learn decay %v: must be in (0, 1]", c.Decay))
	}
	if c.MinSamples > 0 && c.Window > 0 && c.MinSamples > c.Window {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "learn min_samples %d: more than the window of %d", c.MinSamples, c.Window))
	}
	return errors.Join(errs...)
}

func (c LearnConfig) withDefaults() LearnConfig {
	if c.MinSamples == 0 {
		c.MinSamples = DefaultMinSamples
	}
	if c.Window == 0 {
		c.Window = max(DefaultWindow, c.MinSamples)
	}
	if c.Decay == 0 {
		c.Decay = DefaultDecay
	}
	return c
}

// Classifier is the seed's HeatClassifier: explicit class or hint, then the
// template's hint (learned from its runs once it has enough, else the
// operator's), then the request's thresholds. It is safe for concurrent use.
type Classifier struct {
	classes *Classes
	learn   LearnConfig

	mu      sync.Mutex
	hints   map[string]HeatLevel         // set by the operator
	history map[string][]HeatObservation // newest last, at most Window
}

// NewClassifier returns a classifier over classes (nil: the defaults).
func NewClassifier(classes *Classes, learn LearnConfig) (*Classifier, error) {
	if err := learn.Validate(); err != nil {
		return nil, err
	}
	if classes == nil {
		classes = MustDefaultClasses()
	}
	return &Classifier{classes: classes, learn: learn.withDefaults(),
		hints: map[string]HeatLevel{}, history: map[string][]HeatObservation{}}, nil
}

// SetTemplateHint sets the operator's hint for template; "" removes it.
// A template's learned heat, once it has enough runs, takes precedence.
func (c *Classifier) SetTemplateHint(template string, h HeatLevel) error {
	if !tartarus.ValidName(template) {
		return tartarus.Errorf(tartarus.ErrInvalid, "template %q: not a template name", template)
	}
	if h != "" && !h.Valid() {
		return heatError(h)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if h == "" {
		delete(c.hints, template)
	} else {
		c.hints[template] = h
	}
	return nil
}

// Observe records one finished run. The guest reports peaks, so they are
// checked here: a bad one is refused and changes nothing.
func (c *Classifier) Observe(o HeatObservation) error {
	switch {
	case !tartarus.ValidName(o.TemplateID):
		return tartarus.Errorf(tartarus.ErrInvalid, "observation: template %q is not a template name", o.TemplateID)
	case o.ActualDuration < 0:
		return tartarus.Errorf(tartarus.ErrInvalid, "observation of %s: negative duration", o.TemplateID)
	case o.PeakCPU < 0 || math.IsNaN(o.PeakCPU) || math.IsInf(o.PeakCPU, 0):
		return tartarus.Errorf(tartarus.ErrInvalid, "observation of %s: peak CPU %v", o.TemplateID, o.PeakCPU)
	case o.PeakMemory < 0:
		return tartarus.Errorf(tartarus.ErrInvalid, "observation of %s: negative peak memory", o.TemplateID)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	h := append(c.history[o.TemplateID], o)
	if len(h) > c.learn.Window {
		h = slices.Delete(h, 0, len(h)-c.learn.Window)
	}
	c.history[o.TemplateID] = h
	return nil
}

// History returns a copy of template's kept runs, oldest first.
func (c *Classifier) History(template string) []HeatObservation {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.history[template])
}

// observedHeat is the heat one run showed: the thresholds over its duration
// and peak CPU, raised to the coolest class whose memory held its peak.
func (c *Classifier) observedHeat(o *HeatObservation) HeatLevel {
	h := Thresholds(o.ActualDuration, o.PeakCPU)
	mib := (o.PeakMemory + 1<<20 - 1) >> 20
	for r := h.rank(); r < len(Levels); r++ {
		if int64(c.classes.ForHeat(Levels[r]).MemoryMB) >= mib {
			return Levels[r]
		}
	}
	return HeatInferno
}

// learned returns the decay-weighted median heat of template's runs and how
// many there are, or "" when fewer than MinSamples. c.mu is held.
func (c *Classifier) learned(template string) (HeatLevel, int) {
	h := c.history[template]
	if len(h) < c.learn.MinSamples || len(h) == 0 {
		return "", len(h)
	}
	var weight [len(Levels)]float64
	w, total := 1.0, 0.0
	for i := len(h) - 1; i >= 0; i-- {
		weight[c.observedHeat(&h[i]).rank()] += w
		total += w
		w *= c.learn.Decay
	}
	acc := 0.0
	for r, wr := range weight {
		acc += wr
		if 2*acc >= total {
			return Levels[r], len(h)
		}
	}
	return HeatInferno, len(h)
}

// Classify chooses req's heat and class and says why. A named class or an
// explicit hint whose class cannot hold the request is refused
// (tartarus.ErrInvalid); a level from the template or the thresholds is
// raised to the coolest level whose class holds it.
func (c *Classifier) Classify(req *SandboxRequest) (Explanation, error) {
	if err := req.Validate(); err != nil {
		return Explanation{}, err
	}
	if req.ResourceClass != "" {
		cl, err := c.classes.Named(req.ResourceClass)
		if err != nil {
			return Explanation{}, tartarus.Errorf(tartarus.ErrInvalid, "resource_class %q: no such class", req.ResourceClass)
		}
		if req.HeatHint != "" && req.HeatHint != cl.Heat {
			return Explanation{}, tartarus.Errorf(tartarus.ErrInvalid, "heat_hint %s contradicts resource_class %s, which is %s", req.HeatHint, cl.Name, cl.Heat)
		}
		if why := cl.holds(req); why != "" {
			return Explanation{}, tartarus.Errorf(tartarus.ErrInvalid, "resource_class %s: %s", cl.Name, why)
		}
		return Explanation{Heat: cl.Heat, Class: cl.Name, Rule: RuleClass,
			Reason: fmt.Sprintf("the request named class %s, which is %s", cl.Name, cl.Heat)}, nil
	}
	if req.HeatHint != "" {
		cl := c.classes.ForHeat(req.HeatHint)
		if why := cl.holds(req); why != "" {
			return Explanation{}, tartarus.Errorf(tartarus.ErrInvalid, "heat_hint %s: %s; ask for a hotter heat or a larger class", req.HeatHint, why)
		}
		return Explanation{Heat: req.HeatHint, Class: cl.Name, Rule: RuleHint,
			Reason: fmt.Sprintf("the request's heat_hint is %s", req.HeatHint)}, nil
	}
	e := c.templateRule(req.TemplateID)
	if e.Rule == "" {
		h := Thresholds(req.MaxDuration, float64(req.CPUCores))
		e = Explanation{Heat: h, Rule: RuleThresholds, Reason: thresholdReason(req, h)}
	}
	chosen := e.Heat
	for r := chosen.rank(); r < len(Levels); r++ {
		cl := c.classes.ForHeat(Levels[r])
		why := cl.holds(req)
		if why == "" {
			e.Heat, e.Class = cl.Heat, cl.Name
			if cl.Heat != chosen {
				e.RaisedFrom = chosen
				e.Reason += fmt.Sprintf("; raised to %s because %s", cl.Heat, c.classes.ForHeat(chosen).holds(req))
			}
			return e, nil
		}
		if r == len(Levels)-1 {
			return Explanation{}, tartarus.Errorf(tartarus.ErrInvalid, "no resource class holds the request: %s", why)
		}
	}
	return e, nil // unreachable
}

// templateRule is the template's learned or operator hint, or a zero
// Explanation when it has neither.
func (c *Classifier) templateRule(template string) Explanation {
	c.mu.Lock()
	defer c.mu.Unlock()
	if template == "" {
		return Explanation{}
	}
	if h, n := c.learned(template); h != "" {
		why := fmt.Sprintf("template %s ran %s; the decay-weighted median of their heats is %s", template, plural(n, "time", "times"), h)
		if op, ok := c.hints[template]; ok && op != h {
			why += fmt.Sprintf(" (its configured hint %s is overridden)", op)
		}
		return Explanation{Heat: h, Rule: RuleLearned, Reason: why}
	}
	if h, ok := c.hints[template]; ok {
		return Explanation{Heat: h, Rule: RuleTemplateHint, Reason: fmt.Sprintf("template %s is configured %s", template, h)}
	}
	return Explanation{}
}

func thresholdReason(req *SandboxRequest, h HeatLevel) string {
	d := "no max duration"
	if req.MaxDuration > 0 {
		d = "max duration " + req.MaxDuration.String()
	}
	cpus := "no CPU count"
	if req.CPUCores > 0 {
		cpus = plural(req.CPUCores, "CPU", "CPUs")
	}
	var rule string
	switch h {
	case HeatInferno:
		rule = "more than 10m or 4 CPUs or more is inferno"
	case HeatHot:
		rule = "more than 2m or 2 CPUs or more is hot"
	case HeatWarm:
		rule = "more than 30s is warm"
	default:
		rule = "30s or less and under 2 CPUs is cold"
	}
	return fmt.Sprintf("no hint; %s and %s: %s", d, cpus, rule)
}

// ExplainTemplate is the classification of a create of template that asks
// for nothing else (for `tartarus heat explain --template T`).
func (c *Classifier) ExplainTemplate(template string) (Explanation, error) {
	if !tartarus.ValidName(template) {
		return Explanation{}, tartarus.Errorf(tartarus.ErrInvalid, "template %q: not a template name", template)
	}
	return c.Classify(&SandboxRequest{TemplateID: template})
}
