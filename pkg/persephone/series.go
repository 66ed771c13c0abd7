package persephone

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Metrics a series can be built from. Gauges (active VMs, queue depth) take
// the peak within a step, because capacity must cover the peak; counts
// (launches, errors) take the sum; utilisations take the mean.
const (
	MetricActiveVMs  = "active_vms"
	MetricQueueDepth = "queue_depth"
	MetricDemand     = "demand" // active VMs plus queue depth: what capacity must hold
	MetricLaunches   = "launches"
	MetricErrors     = "errors"
	MetricCPU        = "cpu_util"
	MetricMemory     = "memory_util"
	// MetricLaunchesPrefix + template name: that template's launches.
	MetricLaunchesPrefix = "launches:"
)

// ValidMetric reports whether m names a series.
func ValidMetric(m string) error {
	switch m {
	case MetricActiveVMs, MetricQueueDepth, MetricDemand, MetricLaunches, MetricErrors, MetricCPU, MetricMemory:
		return nil
	}
	if t, ok := strings.CutPrefix(m, MetricLaunchesPrefix); ok && nameRE.MatchString(t) {
		return nil
	}
	return tartarus.Errorf(tartarus.ErrInvalid, "metric %q: want active_vms, queue_depth, demand, launches, errors, cpu_util, memory_util or launches:TEMPLATE", m)
}

type aggKind int

const (
	aggMax aggKind = iota
	aggSum
	aggMean
)

func metricOf(m string) (func(*UsageRecord) float64, aggKind) {
	switch m {
	case MetricActiveVMs:
		return func(r *UsageRecord) float64 { return float64(r.ActiveVMs) }, aggMax
	case MetricQueueDepth:
		return func(r *UsageRecord) float64 { return float64(r.QueueDepth) }, aggMax
	case MetricDemand:
		return func(r *UsageRecord) float64 { return float64(r.ActiveVMs + r.QueueDepth) }, aggMax
	case MetricLaunches:
		return func(r *UsageRecord) float64 { return float64(r.LaunchCount) }, aggSum
	case MetricErrors:
		return func(r *UsageRecord) float64 { return float64(r.ErrorCount) }, aggSum
	case MetricCPU:
		return func(r *UsageRecord) float64 { return r.CPUUtil }, aggMean
	case MetricMemory:
		return func(r *UsageRecord) float64 { return r.MemoryUtil }, aggMean
	}
	t := strings.TrimPrefix(m, MetricLaunchesPrefix)
	return func(r *UsageRecord) float64 { return float64(r.LaunchesByTemplate[t]) }, aggSum
}

// Series is equally spaced values of one metric: Values[i] covers
// [Start + i*Step, Start + (i+1)*Step).
type Series struct {
	Metric string
	Start  time.Time
	Step   time.Duration
	Values []float64
}

// BuildSeries turns usage records into a series of metric on the step grid
// from..to (from aligned down to the step). A step with no record takes
// the value one day earlier when there is one, else the previous step's
// (a recorder that was down is not a quiet hour); leading empty steps are
// dropped. Downsampled (hourly) records are spread evenly over the
// minutes they cover for counts, and repeated for gauges.
func BuildSeries(recs []*UsageRecord, metric string, from, to time.Time, step time.Duration) (Series, error) {
	if err := ValidMetric(metric); err != nil {
		return Series{}, err
	}
	if step < time.Minute || step%time.Minute != 0 {
		return Series{}, tartarus.Errorf(tartarus.ErrInvalid, "step %s: want whole minutes", step)
	}
	from = from.Truncate(step)
	if !to.After(from) {
		return Series{}, tartarus.Errorf(tartarus.ErrInvalid, "series: empty range %s..%s", from, to)
	}
	n := int(to.Sub(from) / step)
	if n > 1_000_000 {
		return Series{}, tartarus.Errorf(tartarus.ErrInvalid, "series: %d steps is too many", n)
	}
	get, agg := metricOf(metric)
	vals := make([]float64, n)
	cnt := make([]int, n)
	add := func(at time.Time, v float64) {
		if at.Before(from) {
			return
		}
		i := int(at.Sub(from) / step)
		if i >= n {
			return
		}
		switch agg {
		case aggMax:
			if cnt[i] == 0 || v > vals[i] {
				vals[i] = v
			}
		default:
			vals[i] += v
		}
		cnt[i]++
	}
	for _, r := range recs {
		v := get(r)
		if r.Resolution > time.Minute {
			mins := int(r.Resolution / time.Minute)
			for k := 0; k < mins; k++ {
				at := r.Timestamp.Add(time.Duration(k) * time.Minute)
				if agg == aggSum {
					add(at, v/float64(mins))
				} else {
					add(at, v)
				}
			}
			continue
		}
		add(r.Timestamp, v)
	}
	first := -1
	perDay := int(24 * time.Hour / step)
	for i := range vals {
		if cnt[i] == 0 {
			if first < 0 {
				continue
			}
			if i >= perDay && i-perDay >= first {
				vals[i] = vals[i-perDay]
			} else {
				vals[i] = vals[i-1]
			}
			continue
		}
		if agg == aggMean {
			vals[i] /= float64(cnt[i])
		}
		if first < 0 {
			first = i
		}
	}
	if first < 0 {
		return Series{Metric: metric, Start: to, Step: step}, nil
	}
	return Series{Metric: metric, Start: from.Add(time.Duration(first) * step), Step: step, Values: vals[first:]}, nil
}

// Downsample aggregates minute records into hourly ones (peak for gauges,
// sum for counts, mean for utilisations), keeping records already coarser.
func Downsample(recs []*UsageRecord, every time.Duration) []*UsageRecord {
	buckets := map[int64]*UsageRecord{}
	n := map[int64]int{}
	var keys []int64
	for _, r := range recs {
		k := r.Timestamp.Truncate(every).Unix()
		b := buckets[k]
		if b == nil {
			b = &UsageRecord{Timestamp: time.Unix(k, 0).UTC(), Resolution: every, LaunchesByTemplate: map[string]int{}}
			buckets[k] = b
			keys = append(keys, k)
		}
		b.ActiveVMs = max(b.ActiveVMs, r.ActiveVMs)
		b.QueueDepth = max(b.QueueDepth, r.QueueDepth)
		b.CPUUtil += r.CPUUtil
		b.MemoryUtil += r.MemoryUtil
		b.LaunchCount += r.LaunchCount
		b.ErrorCount += r.ErrorCount
		b.WarmLaunches += r.WarmLaunches
		b.ColdLaunches += r.ColdLaunches
		for t, c := range r.LaunchesByTemplate {
			b.LaunchesByTemplate[t] += c
		}
		n[k]++
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	out := make([]*UsageRecord, 0, len(keys))
	for _, k := range keys {
		b := buckets[k]
		b.CPUUtil /= float64(n[k])
		b.MemoryUtil /= float64(n[k])
		if len(b.LaunchesByTemplate) == 0 {
			b.LaunchesByTemplate = nil
		}
		out = append(out, b)
	}
	return out
}

// validateRecord checks a record from an untrusted source.
func validateRecord(r *UsageRecord) error {
	if r == nil {
		return fmt.Errorf("missing record")
	}
	if r.Timestamp.IsZero() || r.Timestamp.Year() < 2000 || r.Timestamp.Year() > 9999 {
		return fmt.Errorf("timestamp %s out of range", r.Timestamp)
	}
	const maxCount = 1 << 30
	for name, v := range map[string]int{"active_vms": r.ActiveVMs, "queue_depth": r.QueueDepth, "launches": r.LaunchCount, "errors": r.ErrorCount,
		"warm_launches": r.WarmLaunches, "cold_launches": r.ColdLaunches} {
		if v < 0 || v > maxCount {
			return fmt.Errorf("%s %d out of range 0..%d", name, v, maxCount)
		}
	}
	for name, v := range map[string]float64{"cpu_util": r.CPUUtil, "memory_util": r.MemoryUtil} {
		if math.IsNaN(v) || v < 0 || v > 1 {
			return fmt.Errorf("%s %v out of range 0..1", name, v)
		}
	}
	if len(r.LaunchesByTemplate) > maxTemplates {
		return fmt.Errorf("more than %d templates", maxTemplates)
	}
	for t, c := range r.LaunchesByTemplate {
		if !nameRE.MatchString(t) {
			return fmt.Errorf("template %q must match %s", t, nameRE)
		}
		if c < 0 || c > maxCount {
			return fmt.Errorf("launches of %s %d out of range", t, c)
		}
	}
	if r.Resolution != 0 && r.Resolution != time.Minute && r.Resolution != time.Hour {
		return fmt.Errorf("resolution %s: want 1m or 1h", r.Resolution)
	}
	return nil
}

// maxTemplates bounds the templates one record may name.
const maxTemplates = 256
