package persephone

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"
)

// BacktestConfig shapes a rolling-origin evaluation: from each of Origins
// origins, Stride steps apart and ending Horizon steps before the end of
// the series, a model is fitted to everything before the origin and
// forecasts Horizon steps, which are compared with what happened.
type BacktestConfig struct {
	Horizon int     // steps forecast from each origin
	Origins int     // number of origins
	Stride  int     // steps between origins; Horizon when 0
	Level   float64 // prediction interval level; 0.95 when 0
	// ScalePeriod is the season of the naive forecast that scales MASE
	// (Hyndman & Koehler 2006): the in-sample mean absolute error of the
	// seasonal-naive forecast with this period.
	ScalePeriod int
}

// BacktestResult is one model's score.
type BacktestResult struct {
	Model string
	// MASE is the mean absolute error scaled by the training series'
	// seasonal-naive in-sample error (below 1 beats that naive forecast).
	MASE float64
	// WAPE is the sum of absolute errors over the sum of actuals.
	WAPE float64
	// UnderRate is the share of steps (each step is the same number of
	// minutes) where demand exceeded the ready pool sized from the
	// forecast's upper bound, ceil(upper).
	UnderRate float64
	// Coverage is the share of actuals within [lower, upper].
	Coverage float64
	// MeanPool is the mean of ceil(upper): what the bound costs.
	MeanPool float64
	Points   int
	Err      error // the model could not be fitted at some origin
}

// Backtest scores every model on y with the same origins.
func Backtest(y []float64, models []Model, cfg BacktestConfig) []BacktestResult {
	if cfg.Stride <= 0 {
		cfg.Stride = cfg.Horizon
	}
	if cfg.Level == 0 {
		cfg.Level = 0.95
	}
	out := make([]BacktestResult, 0, len(models))
	for _, m := range models {
		out = append(out, backtestOne(y, m, cfg))
	}
	return out
}

func backtestOne(y []float64, m Model, cfg BacktestConfig) BacktestResult {
	res := BacktestResult{Model: m.Name()}
	if cfg.Horizon < 1 || cfg.Origins < 1 || cfg.ScalePeriod < 1 {
		res.Err = errors.New("backtest: horizon, origins and scale period must be positive")
		return res
	}
	var sumScaled, sumAbs, sumY float64
	var under, covered, poolSum float64
	n := 0
	for k := cfg.Origins - 1; k >= 0; k-- {
		o := len(y) - cfg.Horizon - k*cfg.Stride
		if o <= cfg.ScalePeriod {
			res.Err = fmt.Errorf("origin %d: %w", o, ErrTooShort)
			return res
		}
		train := y[:o]
		fit, err := m.Fit(train)
		if err != nil {
			res.Err = err
			return res
		}
		scale := 0.0
		for t := cfg.ScalePeriod; t < len(train); t++ {
			scale += math.Abs(train[t] - train[t-cfg.ScalePeriod])
		}
		scale /= float64(len(train) - cfg.ScalePeriod)
		if scale == 0 {
			scale = 1 // a flat history: absolute errors, unscaled
		}
		mean, lower, upper := fit.Predict(cfg.Horizon, cfg.Level)
		for h := 0; h < cfg.Horizon; h++ {
			a := y[o+h]
			e := math.Abs(a - mean[h])
			sumScaled += e / scale
			sumAbs += e
			sumY += math.Abs(a)
			pool := math.Ceil(math.Max(0, upper[h]))
			poolSum += pool
			if a > pool {
				under++
			}
			if a >= lower[h] && a <= upper[h] {
				covered++
			}
			n++
		}
	}
	res.Points = n
	res.MASE = sumScaled / float64(n)
	if sumY > 0 {
		res.WAPE = sumAbs / sumY
	}
	res.UnderRate = under / float64(n)
	res.Coverage = covered / float64(n)
	res.MeanPool = poolSum / float64(n)
	return res
}

// Pick returns the winner: the lowest MASE among the models that could be
// fitted, the lower under-provisioning rate on a tie.
func Pick(results []BacktestResult) (BacktestResult, bool) {
	var best BacktestResult
	found := false
	for _, r := range results {
		if r.Err != nil || math.IsNaN(r.MASE) {
			continue
		}
		if !found || r.MASE < best.MASE || (r.MASE == best.MASE && r.UnderRate < best.UnderRate) {
			best, found = r, true
		}
	}
	return best, found
}

// WriteBacktestTable prints results as the table `tartarus forecast
// backtest` shows, the winner marked with *.
func WriteBacktestTable(w io.Writer, results []BacktestResult) error {
	win, ok := Pick(results)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "model\tMASE\tWAPE\tunder-provisioned\tinterval coverage\tmean pool\tpoints\t")
	for _, r := range results {
		mark := " "
		if ok && r.Model == win.Model {
			mark = "*"
		}
		if r.Err != nil {
			fmt.Fprintf(tw, "%s%s\t-\t-\t-\t-\t-\t-\t  (%v)\n", mark, r.Model, shortErr(r.Err))
			continue
		}
		fmt.Fprintf(tw, "%s%s\t%.3f\t%.1f%%\t%.1f%%\t%.1f%%\t%.1f\t%d\t\n", mark, r.Model, r.MASE, 100*r.WAPE, 100*r.UnderRate, 100*r.Coverage, r.MeanPool, r.Points)
	}
	return tw.Flush()
}

func shortErr(err error) string {
	if errors.Is(err, ErrTooShort) {
		return "too little history"
	}
	if strings.Contains(err.Error(), "needs positive data") {
		return "needs positive data"
	}
	s := err.Error()
	if len(s) > 60 {
		s = s[:60] + "..."
	}
	return s
}

// Candidates returns the models tried on a series with this step: seasonal
// naive and Holt-Winters (additive and multiplicative) with a daily and,
// when the step allows, a weekly season.
func Candidates(step time.Duration) []Model {
	var ms []Model
	for _, s := range []struct {
		label string
		span  time.Duration
	}{{"day", 24 * time.Hour}, {"week", 7 * 24 * time.Hour}} {
		if step <= 0 || s.span%step != 0 {
			continue
		}
		p := int(s.span / step)
		if p < 2 || p > 20000 {
			continue
		}
		ms = append(ms, SeasonalNaive{Period: p, Label: s.label},
			HoltWinters{Period: p, Label: s.label},
			HoltWinters{Period: p, Multiplicative: true, Label: s.label})
	}
	return ms
}
