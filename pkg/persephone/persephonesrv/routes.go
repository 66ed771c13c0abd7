package persephonesrv

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/persephone"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// Body limits: a season is small; an imported history of MaxCSVRows
// minutes is about 100 bytes a row.
const (
	maxSeasonBody = 1 << 20
	MaxImportBody = 256 << 20
)

// SeasonList is the answer of GET /v1/seasons.
type SeasonList struct {
	Seasons []*persephone.Season `json:"seasons"`
	// Pinned is the season applied by hand ("" for none); Current the
	// season in force now (pinned or scheduled), if any.
	Pinned  string             `json:"pinned"`
	Current *persephone.Season `json:"current"`
}

// BacktestRow is one model's score in GET /v1/forecast/backtest.
type BacktestRow struct {
	Model     string  `json:"model"`
	MASE      float64 `json:"mase"`
	WAPE      float64 `json:"wape"`
	UnderRate float64 `json:"under_provisioned"`
	Coverage  float64 `json:"interval_coverage"`
	MeanPool  float64 `json:"mean_pool"`
	Points    int     `json:"points"`
	Error     string  `json:"error,omitempty"`
	Chosen    bool    `json:"chosen,omitempty"`
}

// BacktestAnswer is the answer of GET /v1/forecast/backtest: the rows and
// the same table as text (what `tartarus forecast backtest` prints).
type BacktestAnswer struct {
	Metric string        `json:"metric"`
	Rows   []BacktestRow `json:"rows"`
	Table  string        `json:"table"`
}

// WarmPoolsAnswer is the answer of GET /v1/warm-pools: the targets of
// the last sizing this server made (with their reasons; on a cluster
// replica only the one that sizes has them), and on a cluster each
// agent's share of each template's pool.
type WarmPoolsAnswer struct {
	Targets []persephone.PoolTarget `json:"targets"`
	Nodes   []persephone.NodePool   `json:"nodes,omitempty"`
}

// ImportAnswer is the answer of POST /v1/usage/import.
type ImportAnswer struct {
	Records int `json:"records"`
}

// Routes are the API routes of seasons, forecasts, usage import, capacity
// and warm-pool targets, to mount behind the server's guard
// (olympus.Config.Routes). Reading them needs read on "node" (they show
// the whole cluster's usage); changing them, update on "node".
//
//	GET    /v1/seasons                    → SeasonList
//	POST   /v1/seasons                    Season → 201 Season (created or replaced)
//	POST   /v1/seasons/{id}/apply         → SeasonList (the season pinned)
//	DELETE /v1/seasons/pin                → SeasonList (no season pinned)
//	GET    /v1/forecast?window=48h&template=T → Forecast (demand, or T's launches)
//	GET    /v1/forecast/backtest?metric=M → BacktestAnswer (default metric: demand)
//	POST   /v1/usage/import               text/csv (see docs/seasons.md) → ImportAnswer
//	GET    /v1/capacity?target_util=0.7   → CapacityRecommendation
//	GET    /v1/warm-pools                 → WarmPoolsAnswer (the last sizing; per agent on a cluster)
func (s *Service) Routes(guard cerberus.Guard) map[string]http.Handler {
	h := &handlers{s: s, guard: guard}
	return map[string]http.Handler{
		"GET /v1/seasons":             h.read(h.listSeasons),
		"POST /v1/seasons":            h.write(h.defineSeason),
		"POST /v1/seasons/{id}/apply": h.write(h.applySeason),
		"DELETE /v1/seasons/pin":      h.write(h.unpin),
		"GET /v1/forecast":            h.read(h.forecast),
		"GET /v1/forecast/backtest":   h.read(h.backtest),
		"POST /v1/usage/import":       h.write(h.importUsage),
		"GET /v1/capacity":            h.read(h.capacity),
		"GET /v1/warm-pools":          h.read(h.warmPools),
	}
}

type handlers struct {
	s     *Service
	guard cerberus.Guard
}

// handlerFunc answers a value (JSON, with status) or an error.
type handlerFunc func(r *http.Request) (int, any, error)

func (h *handlers) read(f handlerFunc) http.Handler  { return h.wrap(cerberus.ActionRead, f) }
func (h *handlers) write(f handlerFunc) http.Handler { return h.wrap(cerberus.ActionUpdate, f) }

func (h *handlers) wrap(action cerberus.Action, f handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqID := w.Header().Get("X-Request-Id")
		res := cerberus.Resource{Type: cerberus.ResourceTypeNode}
		if id := cerberus.IdentityFrom(r.Context()); id != nil {
			res.TenantID = id.TenantID
		}
		if err := h.guard.Authorize(r.Context(), action, res); err != nil {
			api.WriteError(w, err, reqID)
			return
		}
		status, v, err := f(r)
		if err != nil {
			if tartarus.ClassOf(err).Err == nil {
				h.s.log.Error("request failed", "request_id", reqID, "route", r.Pattern, "err", err)
			}
			api.WriteError(w, err, reqID)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	})
}

// onlyQuery refuses query parameters beyond allowed.
func onlyQuery(r *http.Request, allowed ...string) error {
	for k := range r.URL.Query() {
		ok := false
		for _, a := range allowed {
			ok = ok || k == a
		}
		if !ok {
			return tartarus.Errorf(tartarus.ErrInvalid, "query parameter %q is not known here", k)
		}
	}
	return nil
}

func (h *handlers) seasonList(r *http.Request) (int, any, error) {
	// Another replica may have defined or applied a season since.
	if err := h.s.scaler.ReloadSeasons(r.Context()); err != nil {
		return 0, nil, err
	}
	seasons, pinned := h.s.scaler.Seasons()
	cur, err := h.s.scaler.CurrentSeason(r.Context())
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, &SeasonList{Seasons: seasons, Pinned: pinned, Current: cur}, nil
}

func (h *handlers) listSeasons(r *http.Request) (int, any, error) {
	if err := onlyQuery(r); err != nil {
		return 0, nil, err
	}
	return h.seasonList(r)
}

func (h *handlers) defineSeason(r *http.Request) (int, any, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxSeasonBody+1))
	if err != nil {
		return 0, nil, fmt.Errorf("read season: %w", err)
	}
	if len(body) > maxSeasonBody {
		return 0, nil, tartarus.Errorf(tartarus.ErrTooLarge, "season over %d bytes", maxSeasonBody)
	}
	var season persephone.Season
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&season); err != nil {
		return 0, nil, tartarus.Errorf(tartarus.ErrInvalid, "season: %v", err)
	}
	if dec.More() {
		return 0, nil, tartarus.Errorf(tartarus.ErrInvalid, "season: one JSON object expected")
	}
	if err := h.s.scaler.DefineSeason(r.Context(), &season); err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, &season, nil
}

func (h *handlers) applySeason(r *http.Request) (int, any, error) {
	// The season may have been defined at another replica.
	if err := h.s.scaler.ReloadSeasons(r.Context()); err != nil {
		return 0, nil, err
	}
	if err := h.s.scaler.ApplySeason(r.Context(), r.PathValue("id")); err != nil {
		return 0, nil, err
	}
	return h.seasonList(r)
}

func (h *handlers) unpin(r *http.Request) (int, any, error) {
	if err := h.s.scaler.ApplySeason(r.Context(), ""); err != nil {
		return 0, nil, err
	}
	return h.seasonList(r)
}

func (h *handlers) forecast(r *http.Request) (int, any, error) {
	if err := onlyQuery(r, "window", "template"); err != nil {
		return 0, nil, err
	}
	q := r.URL.Query()
	window := 48 * time.Hour
	if v := q.Get("window"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return 0, nil, tartarus.Errorf(tartarus.ErrInvalid, "window %q: want a duration such as 48h", v)
		}
		window = d
	}
	metric := persephone.MetricDemand
	if t := q.Get("template"); t != "" {
		if !tartarus.ValidName(t) {
			return 0, nil, tartarus.Errorf(tartarus.ErrInvalid, "template %q is not a valid name", t)
		}
		metric = "launches:" + t
	}
	f, err := h.s.scaler.ForecastMetric(r.Context(), metric, window)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, f, nil
}

func (h *handlers) backtest(r *http.Request) (int, any, error) {
	if err := onlyQuery(r, "metric"); err != nil {
		return 0, nil, err
	}
	metric := r.URL.Query().Get("metric")
	if metric == "" {
		metric = persephone.MetricDemand
	}
	results, err := h.s.scaler.BacktestMetric(r.Context(), metric)
	if err != nil {
		return 0, nil, err
	}
	ans := &BacktestAnswer{Metric: metric, Rows: []BacktestRow{}}
	best, ok := persephone.Pick(results)
	for _, res := range results {
		row := BacktestRow{Model: res.Model, MASE: finite(res.MASE), WAPE: finite(res.WAPE), UnderRate: finite(res.UnderRate),
			Coverage: finite(res.Coverage), MeanPool: finite(res.MeanPool), Points: res.Points, Chosen: ok && res.Model == best.Model}
		if res.Err != nil {
			row.Error = res.Err.Error()
		}
		ans.Rows = append(ans.Rows, row)
	}
	var table bytes.Buffer
	if err := persephone.WriteBacktestTable(&table, results); err != nil {
		return 0, nil, err
	}
	ans.Table = metric + "\n" + table.String()
	return http.StatusOK, ans, nil
}

// finite keeps NaN and infinities (a model that scored no point) out of
// JSON, which cannot carry them.
func finite(f float64) float64 {
	if f != f || f > 1e300 || f < -1e300 {
		return 0
	}
	return f
}

func (h *handlers) importUsage(r *http.Request) (int, any, error) {
	if err := onlyQuery(r); err != nil {
		return 0, nil, err
	}
	recs, err := persephone.ReadUsageCSV(http.MaxBytesReader(nil, r.Body, MaxImportBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return 0, nil, tartarus.Errorf(tartarus.ErrTooLarge, "usage csv over %d bytes", MaxImportBody)
		}
		if tartarus.ClassOf(err).Err == nil {
			err = tartarus.Errorf(tartarus.ErrInvalid, "%v", err)
		}
		return 0, nil, err
	}
	if err := h.s.scaler.Learn(r.Context(), recs); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, &ImportAnswer{Records: len(recs)}, nil
}

func (h *handlers) capacity(r *http.Request) (int, any, error) {
	if err := onlyQuery(r, "target_util"); err != nil {
		return 0, nil, err
	}
	util := 0.0
	if v := r.URL.Query().Get("target_util"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || !(f > 0 && f <= 1) {
			return 0, nil, tartarus.Errorf(tartarus.ErrInvalid, "target_util %q: want a fraction in (0, 1]", v)
		}
		util = f
	}
	if err := h.s.scaler.ReloadSeasons(r.Context()); err != nil {
		return 0, nil, err
	}
	rec, err := h.s.scaler.RecommendCapacity(r.Context(), util)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, rec, nil
}

func (h *handlers) warmPools(r *http.Request) (int, any, error) {
	if err := onlyQuery(r); err != nil {
		return 0, nil, err
	}
	ans := WarmPoolsAnswer{Targets: h.s.LastTargets()}
	if np, ok := h.s.cfg.Pools.(NodePooler); ok {
		nodes, err := np.NodePools(r.Context())
		if err != nil {
			return 0, nil, err
		}
		ans.Nodes = nodes
	}
	return http.StatusOK, ans, nil
}
