package persephone

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// PoolConfig bounds warm-pool sizing.
type PoolConfig struct {
	// RefillTime is how long making one warm sandbox takes (default 1m).
	RefillTime time.Duration
	// LeadTime is how far ahead pools look when the season in force sets
	// none (default 15m).
	LeadTime time.Duration
	// MaxPerTemplate caps each template's pool (the node's capacity;
	// default 50); MaxTotal caps the sum (0: no cap beyond per template).
	MaxPerTemplate int
	MaxTotal       int
	// RecentWindow is the usage a scale-in must agree with (default 30m).
	RecentWindow time.Duration
}

func (c *PoolConfig) defaults() {
	if c.RefillTime == 0 {
		c.RefillTime = time.Minute
	}
	if c.LeadTime == 0 {
		c.LeadTime = 15 * time.Minute
	}
	if c.MaxPerTemplate == 0 {
		c.MaxPerTemplate = 50
	}
	if c.RecentWindow == 0 {
		c.RecentWindow = 30 * time.Minute
	}
}

// Validate returns every problem with the config (after defaults), joined.
func (c PoolConfig) Validate() error {
	c.defaults()
	var errs []error
	if c.RefillTime < 0 || c.RefillTime > time.Hour {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "pool: refill time %s must be within 0..1h", c.RefillTime))
	}
	if c.LeadTime < 0 || c.LeadTime > 24*time.Hour {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "pool: lead time %s must be within 0..24h", c.LeadTime))
	}
	if c.MaxPerTemplate < 0 || c.MaxTotal < 0 {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "pool: caps must not be negative"))
	}
	if c.RecentWindow < time.Minute || c.RecentWindow > 24*time.Hour {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "pool: recent window %s must be within 1m..24h", c.RecentWindow))
	}
	return errors.Join(errs...)
}

// PoolInput is what one template's pool size is decided from.
type PoolInput struct {
	Current int
	// Upper is the forecast's upper bound of launches per step over the
	// lead time; nil when there is no forecast.
	Upper []float64
	// RecentPeak is the most launches in one step over the recent window.
	RecentPeak float64
	// Factor turns launches per step into launches per refill:
	// max(1, refill time / step).
	Factor float64
	Floor  int // the season's pool size for this template
	Cap    int // the node's capacity for this template
}

// PoolTarget is a template's warm-pool size and why.
type PoolTarget struct {
	Template   string `json:"template"`
	Size       int    `json:"size"`
	Current    int    `json:"current"`
	Forecast   int    `json:"forecast"`    // ceil(max upper bound x factor) over the lead time
	Floor      int    `json:"floor"`       // season prewarm pool size
	RecentPeak int    `json:"recent_peak"` // recent launches per refill
	Reason     string `json:"reason"`
}

// SizePool decides one pool: it grows to the forecast's upper bound of
// launches per refill over the lead time (or the season's floor, if more),
// within the cap; it shrinks only to what both the forecast and the recent
// usage allow, never on the forecast alone.
func SizePool(in PoolInput) (size, forecast, recent int) {
	f := math.Max(1, in.Factor)
	for _, u := range in.Upper {
		forecast = max(forecast, int(math.Ceil(math.Max(0, u)*f-1e-9)))
	}
	recent = int(math.Ceil(in.RecentPeak*f - 1e-9))
	want := max(forecast, in.Floor)
	if want < in.Current {
		want = min(in.Current, max(want, recent))
	}
	return min(want, in.Cap), forecast, recent
}

// PoolTargets sizes the warm pool of every template that has a pool now,
// is listed by the season in force now or within the lead time, or was
// launched recently. current holds the pools' present sizes.
func (s *Scaler) PoolTargets(ctx context.Context, current map[string]int) ([]PoolTarget, error) {
	now := s.cfg.Clock.Now()
	pc := s.cfg.Pool
	lead := pc.LeadTime
	seasonNow := s.SeasonAt(now)
	if seasonNow != nil && seasonNow.Prewarming.LeadTime > 0 {
		lead = seasonNow.Prewarming.LeadTime
	}
	// A season's floor applies from its lead time before it starts until
	// the instant it ends.
	floors := map[string]int{}
	all, _ := s.Seasons()
	for _, season := range all {
		if len(season.Prewarming.Templates) == 0 {
			continue
		}
		ahead := s.SeasonAt(now.Add(season.Prewarming.LeadTime))
		inForce := seasonNow != nil && seasonNow.ID == season.ID
		if !inForce && (ahead == nil || ahead.ID != season.ID) {
			continue
		}
		for _, t := range season.Prewarming.Templates {
			floors[t] = max(floors[t], season.Prewarming.PoolSize)
		}
	}
	recentFrom := now.Add(-pc.RecentWindow).Truncate(s.cfg.Step)
	recs, err := s.cfg.Usage.Range(ctx, now.Add(-24*time.Hour), now)
	if err != nil {
		return nil, fmt.Errorf("pool targets: %w", err)
	}
	names := map[string]bool{}
	for t := range current {
		names[t] = true
	}
	for t := range floors {
		names[t] = true
	}
	for _, r := range recs {
		for t := range r.LaunchesByTemplate {
			names[t] = true
		}
	}
	var out []PoolTarget
	factor := math.Max(1, float64(pc.RefillTime)/float64(s.cfg.Step))
	for t := range names {
		if !nameRE.MatchString(t) {
			continue
		}
		in := PoolInput{Current: current[t], Factor: factor, Floor: floors[t], Cap: pc.MaxPerTemplate}
		var why []string
		fc, err := s.ForecastMetric(ctx, MetricLaunchesPrefix+t, lead+s.cfg.Step)
		switch {
		case err == nil:
			for _, p := range fc.Predictions {
				if p.Time.Before(now.Add(lead)) || len(in.Upper) == 0 {
					in.Upper = append(in.Upper, float64(p.UpperBound))
				}
			}
			why = append(why, fmt.Sprintf("%s upper bound over %s", fc.Model, lead))
		case errors.Is(err, tartarus.ErrFailedPrecondition):
			why = append(why, "no forecast yet (too little history)")
		default:
			return nil, err
		}
		recent := Series{}
		if recent, err = BuildSeries(recs, MetricLaunchesPrefix+t, recentFrom, now.Truncate(s.cfg.Step), s.cfg.Step); err == nil {
			for _, v := range recent.Values {
				in.RecentPeak = math.Max(in.RecentPeak, v)
			}
		}
		size, f, r := SizePool(in)
		if in.Floor > 0 {
			why = append(why, fmt.Sprintf("season floor %d", in.Floor))
		}
		if size < in.Current {
			why = append(why, fmt.Sprintf("scale in: forecast %d and recent peak %d agree", f, r))
		} else if size == in.Current && max(f, in.Floor) < in.Current {
			why = append(why, fmt.Sprintf("held: recent peak %d disagrees with forecast %d", r, f))
		}
		if size == in.Cap && max(f, in.Floor) > in.Cap {
			why = append(why, fmt.Sprintf("capped at %d", in.Cap))
		}
		out = append(out, PoolTarget{Template: t, Size: size, Current: in.Current, Forecast: f, Floor: in.Floor, RecentPeak: r, Reason: strings.Join(why, "; ")})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Template < out[j].Template })
	capTotal(out, pc.MaxTotal)
	return out, nil
}

// capTotal trims the largest pools one at a time until the sum fits.
func capTotal(ts []PoolTarget, total int) {
	if total <= 0 {
		return
	}
	sum := 0
	for _, t := range ts {
		sum += t.Size
	}
	for sum > total {
		i := slices.IndexFunc(ts, func(t PoolTarget) bool {
			return t.Size == slices.MaxFunc(ts, func(a, b PoolTarget) int { return a.Size - b.Size }).Size
		})
		ts[i].Size--
		ts[i].Reason += "; trimmed to the total cap"
		sum--
	}
}
