package persephone

import (
	"bytes"
	"testing"
	"time"
)

// fourteenDays is 14 days of minute launch counts of the day-shaped trace.
func fourteenDays(b testing.TB) []float64 {
	recs := TraceRecords("python", historyStart, LaunchTrace(DefaultDayShape(), historyStart, 14*24*60, 1))
	s, err := BuildSeries(recs, MetricActiveVMs, historyStart, historyStart.Add(14*24*time.Hour), time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	return s.Values
}

// BenchmarkFitForecastMinutes fits additive Holt-Winters with a daily
// season (period 1440) to 14 days of minute data and forecasts 48 hours.
func BenchmarkFitForecastMinutes(b *testing.B) {
	y := fourteenDays(b)
	m := HoltWinters{Period: 1440, Label: "day"}
	b.ResetTimer()
	for b.Loop() {
		f, err := m.Fit(y)
		if err != nil {
			b.Fatal(err)
		}
		f.Predict(48*60, 0.95)
	}
}

// BenchmarkFitForecastFiveMinutes is the same at the scaler's default
// 5-minute step (period 288), the path Forecast takes.
func BenchmarkFitForecastFiveMinutes(b *testing.B) {
	recs := TraceRecords("python", historyStart, LaunchTrace(DefaultDayShape(), historyStart, 14*24*60, 1))
	s, _ := BuildSeries(recs, MetricActiveVMs, historyStart, historyStart.Add(14*24*time.Hour), 5*time.Minute)
	m := HoltWinters{Period: 288, Label: "day"}
	b.ResetTimer()
	for b.Loop() {
		f, err := m.Fit(s.Values)
		if err != nil {
			b.Fatal(err)
		}
		f.Predict(48*12, 0.95)
	}
}

// BenchmarkBacktest is the scaler's model choice: every candidate over 7
// daily origins on 14 days at 5-minute steps.
func BenchmarkBacktest(b *testing.B) {
	recs := TraceRecords("python", historyStart, LaunchTrace(DefaultDayShape(), historyStart, 14*24*60, 1))
	s, _ := BuildSeries(recs, MetricActiveVMs, historyStart, historyStart.Add(14*24*time.Hour), 5*time.Minute)
	b.ResetTimer()
	for b.Loop() {
		Backtest(s.Values, Candidates(5*time.Minute), BacktestConfig{Horizon: 288, Origins: 7, ScalePeriod: 288})
	}
}

// TestBacktestTables prints the tables docs/seasons.md shows (go test
// -run BacktestTables -v ./pkg/persephone).
func TestBacktestTables(t *testing.T) {
	print := func(title string, y []float64, ms []Model, cfg BacktestConfig) {
		var buf bytes.Buffer
		res := Backtest(y, ms, cfg)
		if err := WriteBacktestTable(&buf, res); err != nil {
			t.Fatal(err)
		}
		if _, ok := Pick(res); !ok {
			t.Fatalf("%s: no winner", title)
		}
		t.Logf("%s\n%s", title, buf.String())
	}
	recs := TraceRecords("python", historyStart, LaunchTrace(DefaultDayShape(), historyStart, 15*24*60, 1))
	for _, m := range []string{"launches:python", MetricActiveVMs} {
		s, _ := BuildSeries(recs, m, historyStart, historyStart.Add(15*24*time.Hour), 5*time.Minute)
		print("synthetic day-shaped trace, "+m+", 5-minute steps, 15 days, 7 daily origins",
			s.Values, Candidates(5*time.Minute), BacktestConfig{Horizon: 288, Origins: 7, ScalePeriod: 288})
	}
	year := func() []Model {
		return []Model{SeasonalNaive{Period: 12, Label: "year"}, HoltWinters{Period: 12, Label: "year"}, HoltWinters{Period: 12, Multiplicative: true, Label: "year"}}
	}
	print("AirPassengers (R datasets), monthly, 5 origins of 12 months",
		readSeries(t, "airpassengers.csv"), year(), BacktestConfig{Horizon: 12, Origins: 5, ScalePeriod: 12})
	print("co2 (R datasets), monthly, 5 origins of 12 months",
		readSeries(t, "co2.csv"), year(), BacktestConfig{Horizon: 12, Origins: 5, ScalePeriod: 12})
}
