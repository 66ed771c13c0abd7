package persephone

import (
	"fmt"
	"math"
)

// HoltWinters is triple exponential smoothing with an additive or
// multiplicative season, fitted exactly as R's stats::HoltWinters() fits
// (R 4.x, src/library/stats/R/HoltWinters.R and src/HoltWinters.c):
//
//   - start values from decompose() of the first two periods: the centred
//     moving average of length Period (2xPeriod for an even period) is the
//     trend; the level and slope start as the intercept and slope of a
//     least-squares line through its defined values; the seasonal start is
//     the per-position mean of the detrended values, centred (mean 0, or
//     mean 1 when multiplicative);
//   - the recursion starts at the (Period+1)th value and the SSE sums the
//     squared one-step-ahead errors from there;
//   - alpha, beta, gamma minimise that SSE on [0,1]^3 from R's start
//     (0.3, 0.1, 0.1). R uses L-BFGS-B; we use a Nelder-Mead simplex
//     confined to the box and restarted until it stops improving, which
//     reaches the same minimum on the reference series (holtwinters_test.go);
//   - prediction intervals are R's predict.HoltWinters() formulas, except
//     that the multiplicative one divides by the season s[f] where R (for
//     horizons beyond one period) divides by the slope b, an indexing slip.
type HoltWinters struct {
	Period         int
	Multiplicative bool
	Label          string // "day", "week", ... (for Name)
}

// Name implements Model.
func (m HoltWinters) Name() string {
	kind := "additive"
	if m.Multiplicative {
		kind = "multiplicative"
	}
	return "holt-winters-" + kind + "/" + m.Label
}

// HWFit is a fitted Holt-Winters model: R's alpha, beta, gamma, SSE and
// coefficients (a, b, s[1..f]).
type HWFit struct {
	Alpha, Beta, Gamma float64
	SSE                float64
	A, B               float64
	S                  []float64
	Multiplicative     bool
	// ResidualVar is the sample variance of the one-step errors (R's
	// var(residuals(fit))).
	ResidualVar float64
}

// Fit implements Model.
func (m HoltWinters) Fit(y []float64) (Fitted, error) { return m.FitHW(y) }

// FitHW is Fit with the concrete result.
func (m HoltWinters) FitHW(y []float64) (*HWFit, error) {
	st, err := m.start(y)
	if err != nil {
		return nil, err
	}
	sse := func(p [3]float64) float64 { return st.run(p[0], p[1], p[2], nil).SSE }
	p := minimiseBox(sse, [3]float64{0.3, 0.1, 0.1})
	return st.run(p[0], p[1], p[2], nil), nil
}

// FitFixed runs the filter with the given parameters (R's
// HoltWinters(x, alpha, beta, gamma)).
func (m HoltWinters) FitFixed(y []float64, alpha, beta, gamma float64) (*HWFit, error) {
	st, err := m.start(y)
	if err != nil {
		return nil, err
	}
	return st.run(alpha, beta, gamma, nil), nil
}

type hwStart struct {
	y    []float64
	f    int
	mult bool
	l, b float64
	s    []float64
}

func (m HoltWinters) start(y []float64) (*hwStart, error) {
	f := m.Period
	if f < 2 {
		return nil, fmt.Errorf("%s: period %d must be at least 2", m.Name(), f)
	}
	// Two periods for the start values and at least one step to fit.
	if len(y) < 2*f+1 {
		return nil, fmt.Errorf("%s (period %d, %d values): %w", m.Name(), f, len(y), ErrTooShort)
	}
	if err := checkSeries(y); err != nil {
		return nil, fmt.Errorf("%s: %w", m.Name(), err)
	}
	if m.Multiplicative {
		for i, v := range y {
			if v <= 0 {
				return nil, fmt.Errorf("%s: value %d is %v; multiplicative needs positive data", m.Name(), i, v)
			}
		}
	}
	st := &hwStart{y: y, f: f, mult: m.Multiplicative}
	st.l, st.b, st.s = decomposeStart(y[:2*f], f, m.Multiplicative)
	return st, nil
}

// decomposeStart is R's decompose() of x (two periods) followed by the
// least-squares line through the trend, as HoltWinters() uses it.
func decomposeStart(x []float64, f int, mult bool) (l, b float64, s []float64) {
	var filt []float64
	if f%2 == 0 {
		filt = make([]float64, f+1)
		for i := range filt {
			filt[i] = 1 / float64(f)
		}
		filt[0], filt[f] = 0.5/float64(f), 0.5/float64(f)
	} else {
		filt = make([]float64, f)
		for i := range filt {
			filt[i] = 1 / float64(f)
		}
	}
	nf, shift := len(filt), len(filt)/2
	trend := make([]float64, len(x))
	for i := range x {
		trend[i] = math.NaN()
		if i+shift-(nf-1) < 0 || i+shift >= len(x) {
			continue
		}
		sum := 0.0
		for j := 0; j < nf; j++ {
			sum += filt[j] * x[i+shift-j]
		}
		trend[i] = sum
	}
	s = make([]float64, f)
	for i := 0; i < f; i++ {
		sum, n := 0.0, 0
		for k := i; k < len(x); k += f {
			if math.IsNaN(trend[k]) {
				continue
			}
			if mult {
				sum += x[k] / trend[k]
			} else {
				sum += x[k] - trend[k]
			}
			n++
		}
		s[i] = sum / float64(n)
	}
	mean := 0.0
	for _, v := range s {
		mean += v
	}
	mean /= float64(f)
	for i := range s {
		if mult {
			s[i] /= mean
		} else {
			s[i] -= mean
		}
	}
	// Least squares of the defined trend values on 1..n.
	var ty []float64
	for _, v := range trend {
		if !math.IsNaN(v) {
			ty = append(ty, v)
		}
	}
	n := float64(len(ty))
	mx, my := (n+1)/2, 0.0
	for _, v := range ty {
		my += v
	}
	my /= n
	sxy, sxx := 0.0, 0.0
	for i, v := range ty {
		dx := float64(i+1) - mx
		sxy += dx * (v - my)
		sxx += dx * dx
	}
	b = sxy / sxx
	l = my - b*mx
	return l, b, s
}

// run is R's C_HoltWinters filter; when res is not nil it receives the
// one-step errors.
func (st *hwStart) run(alpha, beta, gamma float64, res *[]float64) *HWFit {
	clamp := func(v float64) float64 { return math.Max(0, math.Min(1, v)) }
	alpha, beta, gamma = clamp(alpha), clamp(beta), clamp(gamma)
	f := st.f
	ring := append([]float64(nil), st.s...)
	level, trend := st.l, st.b
	sse, sum, sumsq := 0.0, 0.0, 0.0
	n := 0
	k := 0
	for _, x := range st.y[f:] {
		stmp := ring[k]
		var xhat float64
		if st.mult {
			xhat = (level + trend) * stmp
		} else {
			xhat = level + trend + stmp
		}
		e := x - xhat
		sse += e * e
		sum += e
		sumsq += e * e
		n++
		if res != nil {
			*res = append(*res, e)
		}
		prev := level
		if st.mult {
			level = alpha*(x/stmp) + (1-alpha)*(prev+trend)
		} else {
			level = alpha*(x-stmp) + (1-alpha)*(prev+trend)
		}
		trend = beta*(level-prev) + (1-beta)*trend
		if st.mult {
			ring[k] = gamma*(x/level) + (1-gamma)*stmp
		} else {
			ring[k] = gamma*(x-level) + (1-gamma)*stmp
		}
		k = (k + 1) % f
	}
	s := make([]float64, f)
	for j := range s {
		s[j] = ring[(k+j)%f]
	}
	v := 0.0
	if n > 1 {
		v = (sumsq - sum*sum/float64(n)) / float64(n-1)
	}
	return &HWFit{Alpha: alpha, Beta: beta, Gamma: gamma, SSE: sse, A: level, B: trend, S: s, Multiplicative: st.mult, ResidualVar: v}
}

// Predict implements Fitted with R's predict.HoltWinters().
func (h *HWFit) Predict(steps int, level float64) (mean, lower, upper []float64) {
	f := len(h.S)
	z := zQuantile(level)
	mean, lower, upper = make([]float64, steps), make([]float64, steps), make([]float64, steps)
	psi := func(j int) float64 {
		p := h.Alpha * (1 + float64(j)*h.Beta)
		if j%f == 0 {
			p += h.Gamma * (1 - h.Alpha)
		}
		return p
	}
	acc := 1.0 // additive: 1 + sum_{j=1}^{h-1} psi(j)^2
	for i := 0; i < steps; i++ {
		hh := i + 1
		base := h.A + float64(hh)*h.B
		var v float64
		if h.Multiplicative {
			mean[i] = base * h.S[i%f]
			rel := i % f // R's rel-1
			sum := 0.0
			for j := 0; j < hh; j++ {
				d := ((rel+1-j)%f + f) % f // R's (rel-j) %% f, 0 meaning s[f]
				den := h.S[(d+f-1)%f]
				q := psi(j) * h.S[rel] / den
				sum += q * q
			}
			v = h.ResidualVar * sum
		} else {
			mean[i] = base + h.S[i%f]
			if hh > 1 {
				p := psi(hh - 1)
				acc += p * p
			}
			v = h.ResidualVar * acc
		}
		w := z * math.Sqrt(v)
		lower[i], upper[i] = mean[i]-w, mean[i]+w
	}
	return mean, lower, upper
}
