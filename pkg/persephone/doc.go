// Package persephone (named for the goddess whose comings and goings mark the
// seasons) sizes capacity ahead of demand: it evaluates cron and time-range
// seasons in a time zone, records per-minute usage, forecasts demand with a
// seasonal-naive baseline and Holt-Winters (fitted as R's HoltWinters() fits),
// backtests the models on the history and uses the winner to size warm pools
// and recommend node counts.
//
// The seed's interface (SeasonalScaler and its types) is kept; extensions:
//
//   - Season.Priority resolves overlapping seasons (see Resolve).
//   - UsageRecord.LaunchesByTemplate feeds per-template pool sizing;
//     UsageRecord.Resolution marks downsampled rows.
//   - Forecast.Model, Forecast.Step and Forecast.Metric say what was forecast
//     and by which model; Prediction bounds are the Forecast.Confidence
//     (nominal coverage) prediction interval.
//   - CapacityRecommendation.Season and PeakUpper explain the number.
//   - Scaler.ForecastMetric forecasts a named series (a template's launches).
//
// Time decides behaviour here, so it comes from an injected clock.Clock and
// every evaluation that depends on "now" takes the time as an argument.
package persephone
