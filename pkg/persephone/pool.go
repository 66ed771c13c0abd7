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
	// RefillTime is how long making one warm sandbox takes (default 1m)
	// and Parallel how many are made at once (default 1), when the node
	// has not measured them (see Refill).
	RefillTime time.Duration
	Parallel   int
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
	if c.Parallel == 0 {
		c.Parallel = 1
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
	if c.Parallel < 0 || c.Parallel > maxParallel {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "pool: parallel %d must be within 0..%d", c.Parallel, maxParallel))
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

// maxParallel bounds the refills a node says it runs at once.
const maxParallel = 1024

// Refill is how fast a node makes warm sandboxes, as it measured them: the
// typical time of one refill and how many it runs at once. Zero fields
// take PoolConfig's.
type Refill struct {
	Time     time.Duration
	Parallel int
}

// PoolInput is what one template's pool size is decided from.
type PoolInput struct {
	Current int
	// Upper is the forecast's upper bound of launches per step over the
	// lead time; nil when there is no forecast.
	Upper []float64
	// AheadMean and AheadUpper are the forecast's mean and upper bound
	// of launches per step over the build horizon (the time refills need
	// to fill the largest pool the cap allows), and Throughput the
	// launches per step the node's refills can replace. Together they give
	// the stock a pool must hold now so that, refilling at full speed from
	// now on, it does not run dry when launches outpace refills (a peak).
	AheadMean, AheadUpper []float64
	Throughput            float64
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
	Deficit    int    `json:"deficit"`     // stock a coming peak needs beyond refill throughput
	Floor      int    `json:"floor"`       // season prewarm pool size
	RecentPeak int    `json:"recent_peak"` // recent launches per refill
	Reason     string `json:"reason"`
	// NodeLabels are the season's prewarming.node_labels: on a cluster
	// the pool goes only to agents carrying them.
	NodeLabels map[string]string `json:"node_labels,omitempty"`
}

// SizePool decides one pool: it grows to the forecast's upper bound of
// launches per refill over the lead time, or to the stock a coming peak
// needs beyond what refills replace (Deficit), or to the season's floor,
// whichever is most, within the cap; it shrinks only to what both the
// forecast and the recent usage allow, never on the forecast alone.
func SizePool(in PoolInput) (size, forecast, recent int) {
	f := math.Max(1, in.Factor)
	for _, u := range in.Upper {
		forecast = max(forecast, int(math.Ceil(math.Max(0, u)*f-1e-9)))
	}
	forecast = max(forecast, Deficit(in.AheadMean, in.AheadUpper, in.Throughput))
	recent = int(math.Ceil(in.RecentPeak*f - 1e-9))
	want := max(forecast, in.Floor)
	if want < in.Current {
		want = min(in.Current, max(want, recent))
	}
	return min(want, in.Cap), forecast, recent
}

// Deficit is the stock a pool must hold now so that, with refills
// replacing throughput launches per step from now on, the launches to come
// do not find it empty: the largest upper bound of the running sum of
// launches beyond throughput,
//
//	max over k of  sum_{i<=k} (mean[i] - throughput) + sqrt(sum_{i<=k} (upper[i] - mean[i])^2)
//
// (the steps' errors taken as independent, so the bound of a sum widens
// with its square root, not with the sum of the steps' bounds). Quiet
// steps before a peak count against it, so the target rises as the peak
// nears, about as fast as refills can fill. Without a throughput (refills
// unmeasured, or infinitely fast) it is 0.
func Deficit(mean, upper []float64, throughput float64) int {
	if throughput <= 0 || math.IsNaN(throughput) || math.IsInf(throughput, 0) {
		return 0
	}
	run, spread, most := 0.0, 0.0, 0.0
	for i, m := range mean {
		m = math.Max(0, m)
		run += m - throughput
		if i < len(upper) {
			d := math.Max(0, upper[i]-m)
			spread += d * d
		}
		most = math.Max(most, run+math.Sqrt(spread))
	}
	if math.IsNaN(most) {
		return 0
	}
	return int(math.Ceil(math.Min(most, maxDeficit) - 1e-9))
}

// maxDeficit keeps Deficit within an int whatever the forecast says; the
// pool's cap is far below it.
const maxDeficit = 1 << 30

// buildHorizon is how far ahead the deficit looks: long enough for the
// refills to fill the largest pool the cap allows (plus a step), at least
// the lead time, at most a day.
func buildHorizon(lead, step time.Duration, capacity int, r Refill) time.Duration {
	build := time.Duration((capacity+r.Parallel-1)/r.Parallel)*r.Time + step
	return min(max(lead, build), 24*time.Hour)
}

// PoolTargets sizes the warm pool of every template that has a pool now,
// is listed by the season in force now or within the lead time, or was
// launched recently. current holds the pools' present sizes; refill is
// how fast the node makes warm sandboxes (measured; zero fields take the
// config's).
func (s *Scaler) PoolTargets(ctx context.Context, current map[string]int, refill Refill) ([]PoolTarget, error) {
	now := s.cfg.Clock.Now()
	pc := s.cfg.Pool
	if refill.Time <= 0 {
		refill.Time = pc.RefillTime
	}
	refill.Time = min(refill.Time, time.Hour)
	if refill.Parallel <= 0 || refill.Parallel > maxParallel {
		refill.Parallel = pc.Parallel
	}
	lead := pc.LeadTime
	seasonNow := s.SeasonAt(now)
	if seasonNow != nil && seasonNow.Prewarming.LeadTime > 0 {
		lead = seasonNow.Prewarming.LeadTime
	}
	// A season's floor applies from its lead time before it starts until
	// the instant it ends.
	floors := map[string]int{}
	labels := map[string]map[string]string{} // of the season that set the floor
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
			if _, seen := floors[t]; !seen || season.Prewarming.PoolSize > floors[t] {
				floors[t], labels[t] = season.Prewarming.PoolSize, season.Prewarming.NodeLabels
			}
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
	factor := math.Max(1, float64(refill.Time)/float64(s.cfg.Step))
	throughput := float64(refill.Parallel) * float64(s.cfg.Step) / float64(refill.Time)
	horizon := buildHorizon(lead, s.cfg.Step, pc.MaxPerTemplate, refill)
	for t := range names {
		if !nameRE.MatchString(t) {
			continue
		}
		in := PoolInput{Current: current[t], Factor: factor, Floor: floors[t], Cap: pc.MaxPerTemplate, Throughput: throughput}
		var why []string
		fc, err := s.predict(ctx, MetricLaunchesPrefix+t, horizon+s.cfg.Step, now)
		switch {
		case err == nil:
			for i := range fc.mean {
				// The step now in progress counts: its launches are still
				// to come.
				at := fc.start.Add(time.Duration(i) * s.cfg.Step)
				if !at.Add(s.cfg.Step).After(now) {
					continue
				}
				up := math.Ceil(math.Max(0, fc.upper[i]) - 1e-9)
				if at.Before(now.Add(lead)) || len(in.Upper) == 0 {
					in.Upper = append(in.Upper, up)
				}
				in.AheadMean = append(in.AheadMean, fc.mean[i])
				in.AheadUpper = append(in.AheadUpper, fc.upper[i])
			}
			why = append(why, fmt.Sprintf("%s upper bound over %s", fc.model, lead))
			if d := Deficit(in.AheadMean, in.AheadUpper, throughput); d > 0 {
				why = append(why, fmt.Sprintf("%d to hold ahead of launches outpacing refills (%d at once, %s each) within %s", d, refill.Parallel, refill.Time, horizon))
			}
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
		out = append(out, PoolTarget{Template: t, Size: size, Current: in.Current, Forecast: f, Deficit: Deficit(in.AheadMean, in.AheadUpper, throughput),
			Floor: in.Floor, RecentPeak: r, Reason: strings.Join(why, "; "), NodeLabels: labels[t]})
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
