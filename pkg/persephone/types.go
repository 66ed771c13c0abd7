package persephone

import (
	"context"
	"time"
)

// SeasonalScaler manages predictive and time-based scaling (the seed's
// interface, unchanged).
type SeasonalScaler interface {
	// Forecast predicts demand (active VMs) over the window from now.
	Forecast(ctx context.Context, window time.Duration) (*Forecast, error)
	// DefineSeason creates or replaces a seasonal scaling rule.
	DefineSeason(ctx context.Context, season *Season) error
	// ApplySeason pins a season regardless of its schedule; "" unpins.
	ApplySeason(ctx context.Context, seasonID string) error
	// Learn adds usage history (recorded or imported).
	Learn(ctx context.Context, history []*UsageRecord) error
	// CurrentSeason returns the season in force now, or nil for none.
	CurrentSeason(ctx context.Context) (*Season, error)
	// RecommendCapacity suggests a node count for the target utilization.
	RecommendCapacity(ctx context.Context, targetUtil float64) (*CapacityRecommendation, error)
}

// Season is a time-based scaling configuration.
type Season struct {
	ID          string `json:"id" yaml:"id"`
	Name        string `json:"name,omitempty" yaml:"name,omitempty"`
	Description string `json:"description,omitempty" yaml:"description,omitempty"`

	// Schedule says when the season applies; an empty schedule makes a
	// manual season, in force only when applied with ApplySeason.
	Schedule SeasonSchedule `json:"schedule" yaml:"schedule"`

	// Priority decides between overlapping seasons: higher wins (extension).
	Priority int `json:"priority,omitempty" yaml:"priority,omitempty"`

	MinNodes          int     `json:"min_nodes" yaml:"min_nodes"`
	MaxNodes          int     `json:"max_nodes" yaml:"max_nodes"`
	TargetUtilization float64 `json:"target_utilization" yaml:"target_utilization"`

	Prewarming PrewarmConfig `json:"prewarming" yaml:"prewarming"`

	// ResourceMix is the share of each resource class (sums to at most 1).
	ResourceMix map[string]float64 `json:"resource_mix,omitempty" yaml:"resource_mix,omitempty"`
}

// SeasonSchedule says when a season is in force: inside any TimeRange, or
// from a firing of StartCron until the next firing of EndCron, evaluated on
// the wall clock of Timezone (UTC when empty).
type SeasonSchedule struct {
	StartCron  string      `json:"start_cron,omitempty" yaml:"start_cron,omitempty"` // e.g. "0 8 * * MON-FRI"
	EndCron    string      `json:"end_cron,omitempty" yaml:"end_cron,omitempty"`     // e.g. "0 18 * * MON-FRI"
	TimeRanges []TimeRange `json:"time_ranges,omitempty" yaml:"time_ranges,omitempty"`
	Timezone   string      `json:"timezone,omitempty" yaml:"timezone,omitempty"` // IANA name, e.g. "Europe/Berlin"
}

// TimeRange is the half-open interval [Start, End).
type TimeRange struct {
	Start time.Time `json:"start" yaml:"start"`
	End   time.Time `json:"end" yaml:"end"`
}

// PrewarmConfig is a season's warm-pool setting.
type PrewarmConfig struct {
	// Templates to keep warm while the season is in force.
	Templates []string `json:"templates,omitempty" yaml:"templates,omitempty"`
	// PoolSize is the least number of warm sandboxes per listed template.
	PoolSize int `json:"pool_size,omitempty" yaml:"pool_size,omitempty"`
	// LeadTime is how far ahead of the season's start the pools fill, and
	// how far ahead the forecast-sized pools look.
	LeadTime time.Duration `json:"lead_time,omitempty" yaml:"lead_time,omitempty"`
	// NodeLabels, on a cluster, keep the listed templates' warm pools on
	// the agents that carry every one of these labels (extension).
	NodeLabels map[string]string `json:"node_labels,omitempty" yaml:"node_labels,omitempty"`
}

// Forecast is a sequence of predictions from GeneratedAt.
type Forecast struct {
	GeneratedAt time.Time     `json:"generated_at"`
	Window      time.Duration `json:"window"`
	Predictions []Prediction  `json:"predictions"`
	// Confidence is the nominal coverage of [LowerBound, UpperBound].
	Confidence float64 `json:"confidence"`

	Metric string        `json:"metric"` // what was forecast, e.g. "active_vms" or "launches:python"
	Model  string        `json:"model"`  // e.g. "holt-winters-additive/day"
	Step   time.Duration `json:"step"`   // time between predictions
}

// Prediction is the forecast for the step starting at Time.
type Prediction struct {
	Time            time.Time `json:"time"`
	PredictedDemand int       `json:"predicted_demand"`
	UpperBound      int       `json:"upper_bound"`
	LowerBound      int       `json:"lower_bound"`
	Confidence      float64   `json:"confidence"`
}

// UsageRecord is the cluster's usage in one minute (or, downsampled, one
// hour: see Resolution).
type UsageRecord struct {
	Timestamp   time.Time `json:"timestamp"`
	ActiveVMs   int       `json:"active_vms"`
	QueueDepth  int       `json:"queue_depth"`
	CPUUtil     float64   `json:"cpu_util"`    // 0..1
	MemoryUtil  float64   `json:"memory_util"` // 0..1
	LaunchCount int       `json:"launch_count"`
	ErrorCount  int       `json:"error_count"`

	// LaunchesByTemplate counts the launches of each template (extension).
	LaunchesByTemplate map[string]int `json:"launches_by_template,omitempty"`
	// WarmLaunches and ColdLaunches split the launches by whether they
	// found a warm sandbox (extension; 0 and 0 when the nodes do not say,
	// as in imported history).
	WarmLaunches int `json:"warm_launches,omitempty"`
	ColdLaunches int `json:"cold_launches,omitempty"`
	// Resolution is the span the record covers: 0 or one minute for a
	// recorded minute, one hour for a downsampled row (extension).
	Resolution time.Duration `json:"resolution,omitempty"`
}

// CapacityRecommendation is a node count with its reasons.
type CapacityRecommendation struct {
	CurrentNodes     int     `json:"current_nodes"`
	RecommendedNodes int     `json:"recommended_nodes"`
	Reason           string  `json:"reason"`
	CostDelta        float64 `json:"cost_delta"` // per hour, in the configured node cost's unit
	ConfidenceLevel  float64 `json:"confidence_level"`

	Season    string `json:"season,omitempty"` // season in force, if any
	PeakUpper int    `json:"peak_upper"`       // upper bound of the peak forecast active VMs
}
