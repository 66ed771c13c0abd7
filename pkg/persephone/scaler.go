package persephone

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// NodeCounter reports how many nodes the cluster has now.
type NodeCounter interface {
	NodeCount(ctx context.Context) (int, error)
}

// Config configures a Scaler.
type Config struct {
	Usage   UsageStore  // required
	Seasons SeasonStore // optional: seasons survive restarts and are shared
	Clock   clock.Clock // required
	Nodes   NodeCounter // optional: current node count for RecommendCapacity
	Log     *slog.Logger

	// Step is the forecast's resolution (default 5m); History how much
	// usage a fit sees (default 14 days, AWS predictive scaling's too).
	Step    time.Duration
	History time.Duration
	// Level is the prediction interval's nominal coverage (default 0.95).
	Level float64
	// Refit is how often model parameters are re-estimated and the model
	// re-chosen by backtest (default 1h); between refits the chosen model
	// is re-run over new data with its parameters kept.
	Refit time.Duration
	// Backtest origins and horizon (defaults 7 origins of one day).
	BacktestOrigins int
	BacktestHorizon time.Duration

	// VMsPerNode is how many sandboxes a node holds at 100% (default 32);
	// NodeCostPerHour prices CostDelta (default 1).
	VMsPerNode      int
	NodeCostPerHour float64

	Pool PoolConfig
}

func (c *Config) defaults() {
	if c.Step == 0 {
		c.Step = 5 * time.Minute
	}
	if c.History == 0 {
		c.History = 14 * 24 * time.Hour
	}
	if c.Level == 0 {
		c.Level = 0.95
	}
	if c.Refit == 0 {
		c.Refit = time.Hour
	}
	if c.BacktestOrigins == 0 {
		c.BacktestOrigins = 7
	}
	if c.BacktestHorizon == 0 {
		c.BacktestHorizon = 24 * time.Hour
	}
	if c.VMsPerNode == 0 {
		c.VMsPerNode = 32
	}
	if c.NodeCostPerHour == 0 {
		c.NodeCostPerHour = 1
	}
	c.Pool.defaults()
}

// Validate returns every problem with the config (after defaults), joined.
func (c Config) Validate() error {
	c.defaults()
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "persephone: "+format, args...))
	}
	if c.Usage == nil {
		bad("usage store is required")
	}
	if c.Clock == nil {
		bad("clock is required")
	}
	if c.Step < time.Minute || c.Step%time.Minute != 0 || (24*time.Hour)%c.Step != 0 {
		bad("step %s must be whole minutes dividing a day", c.Step)
	}
	if c.History < 2*24*time.Hour || c.History > 400*24*time.Hour {
		bad("history %s must be within 2..400 days", c.History)
	}
	if c.Level <= 0 || c.Level >= 1 {
		bad("level %v must be within (0,1)", c.Level)
	}
	if c.Refit < time.Minute {
		bad("refit %s below a minute", c.Refit)
	}
	if c.BacktestOrigins < 1 || c.BacktestOrigins > 100 || c.BacktestHorizon < c.Step {
		bad("backtest: 1..100 origins of at least one step")
	}
	if c.VMsPerNode < 1 || c.NodeCostPerHour < 0 || math.IsNaN(c.NodeCostPerHour) {
		bad("vms per node must be positive and node cost not negative")
	}
	if err := c.Pool.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Scaler is the SeasonalScaler: seasons, forecasts from recorded usage,
// pool sizes and capacity advice.
type Scaler struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	seasons map[string]*compiled
	pinned  string
	models  map[string]*chosenModel // by metric
}

// chosenModel is the backtest winner for a metric and its parameters.
type chosenModel struct {
	model   Model
	params  *HWFit // Holt-Winters parameters, reused between refits
	at      time.Time
	results []BacktestResult
}

var _ SeasonalScaler = (*Scaler)(nil)

// New returns a Scaler, loading seasons from cfg.Seasons when set.
func New(ctx context.Context, cfg Config) (*Scaler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.defaults()
	s := &Scaler{cfg: cfg, log: cfg.Log, seasons: map[string]*compiled{}, models: map[string]*chosenModel{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if err := s.ReloadSeasons(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// ReloadSeasons replaces the seasons and the pin with those of
// cfg.Seasons (nothing without one): in a cluster another replica may
// have defined or applied one since.
func (s *Scaler) ReloadSeasons(ctx context.Context) error {
	if s.cfg.Seasons == nil {
		return nil
	}
	seasons, pinned, err := s.cfg.Seasons.LoadSeasons(ctx)
	if err != nil {
		return fmt.Errorf("persephone: %w", err)
	}
	cs := make(map[string]*compiled, len(seasons))
	for _, season := range seasons {
		c, err := compile(season)
		if err != nil {
			return fmt.Errorf("persephone: stored season: %w", err)
		}
		cs[season.ID] = c
	}
	s.mu.Lock()
	s.seasons, s.pinned = cs, pinned
	s.mu.Unlock()
	return nil
}

// DefineSeason implements SeasonalScaler: it creates or replaces a season.
func (s *Scaler) DefineSeason(ctx context.Context, season *Season) error {
	c, err := compile(season)
	if err != nil {
		return err
	}
	cp := *season
	c.season = &cp
	if s.cfg.Seasons != nil {
		if err := s.cfg.Seasons.SaveSeason(ctx, &cp); err != nil {
			return fmt.Errorf("define season %s: %w", season.ID, err)
		}
	}
	s.mu.Lock()
	s.seasons[season.ID] = c
	s.mu.Unlock()
	return nil
}

// ApplySeason implements SeasonalScaler: it pins the season until another
// is applied or "" unpins; a pinned season is in force whatever its
// schedule says.
func (s *Scaler) ApplySeason(ctx context.Context, seasonID string) error {
	s.mu.Lock()
	_, ok := s.seasons[seasonID]
	s.mu.Unlock()
	if seasonID != "" && !ok {
		return tartarus.Errorf(tartarus.ErrNotFound, "season %q", seasonID)
	}
	if s.cfg.Seasons != nil {
		if err := s.cfg.Seasons.SavePin(ctx, seasonID); err != nil {
			return fmt.Errorf("apply season %s: %w", seasonID, err)
		}
	}
	s.mu.Lock()
	s.pinned = seasonID
	s.mu.Unlock()
	return nil
}

// Seasons returns the defined seasons by ID and the pinned one.
func (s *Scaler) Seasons() ([]*Season, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Season, 0, len(s.seasons))
	for _, c := range s.seasons {
		cp := *c.season
		out = append(out, &cp)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, s.pinned
}

// CurrentSeason implements SeasonalScaler: the season in force at the
// clock's now (nil for none).
func (s *Scaler) CurrentSeason(ctx context.Context) (*Season, error) {
	return s.SeasonAt(s.cfg.Clock.Now()), nil
}

// SeasonAt is the season in force at an instant (see Resolve).
func (s *Scaler) SeasonAt(at time.Time) *Season {
	s.mu.Lock()
	cs := make([]*compiled, 0, len(s.seasons))
	for _, c := range s.seasons {
		cs = append(cs, c)
	}
	pinned := s.pinned
	s.mu.Unlock()
	season := resolve(cs, pinned, at)
	if season == nil {
		return nil
	}
	cp := *season
	return &cp
}

// Learn implements SeasonalScaler: it stores the records (a minute already
// recorded is kept as it was) and makes the next forecast re-choose its
// model.
func (s *Scaler) Learn(ctx context.Context, history []*UsageRecord) error {
	for i, r := range history {
		if _, err := s.cfg.Usage.Record(ctx, r); err != nil {
			return fmt.Errorf("learn record %d: %w", i, err)
		}
	}
	s.mu.Lock()
	s.models = map[string]*chosenModel{}
	s.mu.Unlock()
	return nil
}

// Forecast implements SeasonalScaler: demand (active VMs plus queue
// depth) over the window.
func (s *Scaler) Forecast(ctx context.Context, window time.Duration) (*Forecast, error) {
	return s.ForecastMetric(ctx, MetricDemand, window)
}

// MaxWindow bounds a forecast's window.
const MaxWindow = 14 * 24 * time.Hour

// ForecastMetric forecasts a metric (see ValidMetric) over the window.
func (s *Scaler) ForecastMetric(ctx context.Context, metric string, window time.Duration) (*Forecast, error) {
	if err := ValidMetric(metric); err != nil {
		return nil, err
	}
	if window < s.cfg.Step || window > MaxWindow {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "forecast window %s must be within %s..%s", window, s.cfg.Step, MaxWindow)
	}
	now := s.cfg.Clock.Now()
	p, err := s.predict(ctx, metric, window, now)
	if err != nil {
		return nil, err
	}
	name, start, mean, lower, upper := p.model, p.start, p.mean, p.lower, p.upper
	h := len(mean)
	f := &Forecast{GeneratedAt: now, Window: window, Confidence: s.cfg.Level, Metric: metric, Model: name, Step: s.cfg.Step}
	for i := 0; i < h; i++ {
		f.Predictions = append(f.Predictions, Prediction{
			Time:            start.Add(time.Duration(i) * s.cfg.Step),
			PredictedDemand: int(math.Round(math.Max(0, mean[i]))),
			UpperBound:      int(math.Ceil(math.Max(0, upper[i]))),
			LowerBound:      int(math.Floor(math.Max(0, lower[i]))),
			Confidence:      s.cfg.Level,
		})
	}
	return f, nil
}

// prediction is a forecast before rounding: the model, the first step's
// time and the mean and bounds of each step.
type prediction struct {
	model              string
	start              time.Time
	mean, lower, upper []float64
}

// predict forecasts metric over window from now, unrounded.
func (s *Scaler) predict(ctx context.Context, metric string, window time.Duration, now time.Time) (*prediction, error) {
	series, err := s.series(ctx, metric, now)
	if err != nil {
		return nil, err
	}
	fit, name, err := s.fitted(metric, series, now)
	if err != nil {
		return nil, err
	}
	h := int((window + s.cfg.Step - 1) / s.cfg.Step)
	mean, lower, upper := fit.Predict(h, s.cfg.Level)
	return &prediction{model: name, start: series.Start.Add(time.Duration(len(series.Values)) * series.Step),
		mean: mean, lower: lower, upper: upper}, nil
}

// series is the metric's history up to the last whole step before now.
func (s *Scaler) series(ctx context.Context, metric string, now time.Time) (Series, error) {
	to := now.Truncate(s.cfg.Step)
	from := to.Add(-s.cfg.History)
	recs, err := s.cfg.Usage.Range(ctx, from, to)
	if err != nil {
		return Series{}, fmt.Errorf("forecast %s: %w", metric, err)
	}
	series, err := BuildSeries(recs, metric, from, to, s.cfg.Step)
	if err != nil {
		return Series{}, err
	}
	if len(series.Values) < int(24*time.Hour/s.cfg.Step)+1 {
		return Series{}, tartarus.Errorf(tartarus.ErrFailedPrecondition, "forecast %s: %d steps of history, need more than one day", metric, len(series.Values))
	}
	return series, nil
}

// fitted returns the chosen model fitted to the series, choosing it by
// backtest and re-estimating parameters when the last choice is older than
// Refit.
func (s *Scaler) fitted(metric string, series Series, now time.Time) (Fitted, string, error) {
	s.mu.Lock()
	ch := s.models[metric]
	s.mu.Unlock()
	if ch == nil || now.Sub(ch.at) >= s.cfg.Refit || now.Before(ch.at) {
		res := s.backtest(series.Values)
		win, ok := Pick(res)
		if !ok {
			return nil, "", tartarus.Errorf(tartarus.ErrFailedPrecondition, "forecast %s: no model fits %d steps of history", metric, len(series.Values))
		}
		var model Model
		for _, m := range Candidates(s.cfg.Step) {
			if m.Name() == win.Model {
				model = m
			}
		}
		ch = &chosenModel{model: model, at: now, results: res}
		if hw, ok := model.(HoltWinters); ok {
			p, err := hw.FitHW(series.Values)
			if err != nil {
				return nil, "", err
			}
			ch.params = p
		}
		s.mu.Lock()
		s.models[metric] = ch
		s.mu.Unlock()
	}
	if hw, ok := ch.model.(HoltWinters); ok && ch.params != nil {
		f, err := hw.FitFixed(series.Values, ch.params.Alpha, ch.params.Beta, ch.params.Gamma)
		return f, ch.model.Name(), err
	}
	f, err := ch.model.Fit(series.Values)
	return f, ch.model.Name(), err
}

// backtest scores the candidates on the last BacktestOrigins horizons of
// the values (fewer when the history is short).
func (s *Scaler) backtest(y []float64) []BacktestResult {
	h := int(s.cfg.BacktestHorizon / s.cfg.Step)
	perDay := int(24 * time.Hour / s.cfg.Step)
	origins := s.cfg.BacktestOrigins
	for origins > 1 && len(y)-origins*h < 2*perDay+1 {
		origins--
	}
	if len(y)-origins*h < perDay+1 {
		h = max(1, (len(y)-perDay-1)/origins)
	}
	return Backtest(y, Candidates(s.cfg.Step), BacktestConfig{Horizon: h, Origins: origins, Level: s.cfg.Level, ScalePeriod: perDay})
}

// BacktestMetric runs the backtest `tartarus forecast backtest` prints.
func (s *Scaler) BacktestMetric(ctx context.Context, metric string) ([]BacktestResult, error) {
	if err := ValidMetric(metric); err != nil {
		return nil, err
	}
	series, err := s.series(ctx, metric, s.cfg.Clock.Now())
	if err != nil {
		return nil, err
	}
	return s.backtest(series.Values), nil
}
