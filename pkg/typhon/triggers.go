package typhon

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"cel.dev/cel-go/cel"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Bounds of a policy's triggers.
const (
	MaxTriggers         = 64
	MaxConditionLen     = 4096
	DefaultCostLimit    = 100_000
	maxTriggerNameLen   = 64
	maxAllowedEgress    = 64
	maxQuarantineNodes  = 64
	maxQuarantineBound  = 30 * 24 * 3600 // seconds
	interruptCheckEvery = 100
)

// Trigger is a compiled AutoQuarantineTrigger.
type Trigger struct {
	AutoQuarantineTrigger
	prg cel.Program
}

// newEnv is the trigger language: the variables in signals.go and CEL's
// standard library.
func newEnv() (*cel.Env, error) {
	return cel.NewEnv(celVariables()...)
}

// CompileError is an invalid condition: which trigger, where and why.
type CompileError struct {
	Trigger int // index in the policy
	Line    int
	Column  int
	Message string
}

func (e *CompileError) Error() string {
	return fmt.Sprintf("auto_triggers[%d].condition: line %d, column %d: %s", e.Trigger, e.Line, e.Column, e.Message)
}

// Unwrap makes a CompileError an invalid argument.
func (e *CompileError) Unwrap() error { return tartarus.ErrInvalid }

// compileTriggers compiles every enabled and disabled trigger of p (a
// disabled one must still be valid, so enabling it later cannot fail) and
// returns every problem at once.
func compileTriggers(p *QuarantinePolicy, costLimit uint64) ([]*Trigger, error) {
	env, err := newEnv()
	if err != nil {
		return nil, fmt.Errorf("typhon: trigger language: %w", err)
	}
	var out []*Trigger
	var errs []error
	for i, t := range p.AutoTriggers {
		ast, iss := env.Compile(t.Condition)
		if iss != nil && iss.Err() != nil {
			for _, e := range iss.Errors() {
				errs = append(errs, &CompileError{Trigger: i, Line: e.Location.Line(), Column: e.Location.Column() + 1, Message: e.Message})
			}
			continue
		}
		if ast.OutputType() != cel.BoolType {
			errs = append(errs, &CompileError{Trigger: i, Line: 1, Column: 1,
				Message: fmt.Sprintf("condition must be a bool, not %s", ast.OutputType())})
			continue
		}
		prg, err := env.Program(ast, cel.CostLimit(costLimit), cel.InterruptCheckFrequency(interruptCheckEvery))
		if err != nil {
			errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "auto_triggers[%d].condition: %v", i, err))
			continue
		}
		out = append(out, &Trigger{AutoQuarantineTrigger: t, prg: prg})
	}
	return out, errors.Join(errs...)
}

// Eval runs the trigger over one sandbox's variables. An expression over
// its cost limit, or cut by ctx, is an error, never a match.
func (t *Trigger) Eval(ctx context.Context, vars map[string]any) (bool, error) {
	out, _, err := t.prg.ContextEval(ctx, vars)
	if err != nil {
		return false, fmt.Errorf("trigger %q: %w", t.label(), err)
	}
	b, ok := out.Value().(bool)
	if !ok {
		return false, fmt.Errorf("trigger %q: result is %T, not bool", t.label(), out.Value())
	}
	return b, nil
}

func (t *Trigger) label() string {
	if t.Name != "" {
		return t.Name
	}
	return t.Condition
}

// validatePolicy checks a policy's shape (not its conditions, which
// compileTriggers checks) and returns every problem.
func validatePolicy(p *QuarantinePolicy) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, format, args...))
	}
	if len(p.AutoTriggers) > MaxTriggers {
		bad("auto_triggers: at most %d", MaxTriggers)
	}
	for i, t := range p.AutoTriggers {
		if strings.TrimSpace(t.Condition) == "" {
			bad("auto_triggers[%d].condition: empty", i)
		}
		if len(t.Condition) > MaxConditionLen {
			bad("auto_triggers[%d].condition: at most %d bytes", i, MaxConditionLen)
		}
		if len(t.Name) > maxTriggerNameLen {
			bad("auto_triggers[%d].name: at most %d bytes", i, maxTriggerNameLen)
		}
		if !t.Reason.Valid() {
			bad("auto_triggers[%d].reason %q: want one of %v", i, t.Reason, tartarus.QuarantineReasons)
		}
	}
	switch p.Isolation.NetworkMode {
	case "", NetworkModeNone, NetworkModeRestricted, NetworkModeMonitored:
	default:
		bad("isolation.network_mode %q: want none, restricted or monitored", p.Isolation.NetworkMode)
	}
	if len(p.Isolation.AllowedEgress) > maxAllowedEgress {
		bad("isolation.allowed_egress: at most %d entries", maxAllowedEgress)
	}
	for _, e := range p.Isolation.AllowedEgress {
		if e == "" || len(e) > 256 || strings.ContainsAny(e, " \t\r\n\x00") {
			bad("isolation.allowed_egress %q: want a host, address or CIDR (with an optional :port)", e)
		}
	}
	// A setting that is not enforced is refused rather than pretended.
	if p.Isolation.SeccompProfile != "" && p.Isolation.SeccompProfile != SeccompStrict {
		bad("isolation.seccomp_profile %.64q: want %q or empty (docs/quarantine.md)", p.Isolation.SeccompProfile, SeccompStrict)
	}
	if p.Isolation.StorageBackend != "" {
		bad("isolation.storage_backend %.64q: evidence always goes to the server's own evidence store (--quarantine-evidence-store), never the snapshot store; leave it empty", p.Isolation.StorageBackend)
	}
	if len(p.QuarantineNodes) > maxQuarantineNodes {
		bad("quarantine_nodes: at most %d", maxQuarantineNodes)
	}
	for _, n := range p.QuarantineNodes {
		k, v, ok := strings.Cut(n, "=")
		if !ok || !tartarus.ValidLabel(k) || !tartarus.ValidLabel(v) {
			bad("quarantine_nodes: %.80q is not a node label: want key=value, such as %s=yes", n, NodeLabel)
		}
	}
	if p.MaxQuarantineDuration < 0 || p.MaxQuarantineDuration.Seconds() > maxQuarantineBound {
		bad("max_quarantine_duration: want 0 (default %s) to 30 days", tartarus.DefaultMaxQuarantine)
	}
	return errors.Join(errs...)
}
