package persephone

import (
	"errors"
	"fmt"
	"math"
)

// Model fits a forecaster to a series of equally spaced values.
type Model interface {
	// Name says which model and which season, e.g. "holt-winters-additive/day".
	Name() string
	// Fit fits the model to y (oldest first).
	Fit(y []float64) (Fitted, error)
}

// Fitted is a model fitted to a series; it forecasts the steps after it.
type Fitted interface {
	// Predict returns the mean forecast for steps 1..h after the series and
	// the bounds of the level (e.g. 0.95) prediction interval.
	Predict(h int, level float64) (mean, lower, upper []float64)
}

// ErrTooShort means a series is too short for a model.
var ErrTooShort = errors.New("persephone: series too short for the model")

// zQuantile is the standard normal quantile qnorm((1+level)/2).
func zQuantile(level float64) float64 {
	if level <= 0 || level >= 1 || math.IsNaN(level) {
		level = 0.95
	}
	return math.Sqrt2 * math.Erfinv(level)
}

func checkSeries(y []float64) error {
	for i, v := range y {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("value %d is %v", i, v)
		}
	}
	return nil
}

// SeasonalNaive forecasts each step as the value one period earlier: the
// baseline every other model must beat.
type SeasonalNaive struct {
	Period int
	Label  string // "day", "week", ... (for Name)
}

// Name implements Model.
func (m SeasonalNaive) Name() string { return "seasonal-naive/" + m.Label }

// Fit implements Model.
func (m SeasonalNaive) Fit(y []float64) (Fitted, error) {
	if m.Period < 1 {
		return nil, fmt.Errorf("seasonal naive: period %d", m.Period)
	}
	if len(y) < m.Period+1 {
		return nil, fmt.Errorf("seasonal naive (period %d, %d values): %w", m.Period, len(y), ErrTooShort)
	}
	if err := checkSeries(y); err != nil {
		return nil, fmt.Errorf("seasonal naive: %w", err)
	}
	ss := 0.0
	for t := m.Period; t < len(y); t++ {
		e := y[t] - y[t-m.Period]
		ss += e * e
	}
	return &naiveFit{last: append([]float64(nil), y[len(y)-m.Period:]...), sigma: math.Sqrt(ss / float64(len(y)-m.Period))}, nil
}

type naiveFit struct {
	last  []float64 // the last period
	sigma float64   // residual standard deviation
}

// Predict implements Fitted: the h-step standard deviation grows with the
// number of whole periods ahead (Hyndman & Athanasopoulos, FPP3 5.5).
func (f *naiveFit) Predict(h int, level float64) (mean, lower, upper []float64) {
	m := len(f.last)
	z := zQuantile(level)
	mean, lower, upper = make([]float64, h), make([]float64, h), make([]float64, h)
	for i := 0; i < h; i++ {
		mean[i] = f.last[i%m]
		w := z * f.sigma * math.Sqrt(float64(i/m+1))
		lower[i], upper[i] = mean[i]-w, mean[i]+w
	}
	return mean, lower, upper
}
