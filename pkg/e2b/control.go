package e2b

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// controlRoutes mounts E2B's control-plane calls.
func (h *Handler) controlRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /sandboxes", h.create)
	mux.HandleFunc("POST /v2/sandboxes", h.create)
	mux.HandleFunc("GET /sandboxes", h.listV1)
	mux.HandleFunc("GET /v2/sandboxes", h.listV2)
	mux.HandleFunc("GET /sandboxes/{id}", h.get)
	mux.HandleFunc("DELETE /sandboxes/{id}", h.kill)
	mux.HandleFunc("POST /sandboxes/{id}/pause", h.pause)
	mux.HandleFunc("POST /sandboxes/{id}/resume", h.connect)
	mux.HandleFunc("POST /sandboxes/{id}/connect", h.connect)
	mux.HandleFunc("POST /v2/sandboxes/{id}/connect", h.connect)
	mux.HandleFunc("POST /sandboxes/{id}/timeout", h.timeout)
	mux.HandleFunc("POST /sandboxes/{id}/refreshes", h.refresh)
	mux.HandleFunc("GET /sandboxes/{id}/metrics", h.metrics)
	mux.HandleFunc("POST /sandboxes/{id}/fork", h.fork)
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, apiError{Code: 404, Message: r.Method + " " + r.URL.Path + " is not part of the E2B API served by Tartarus"})
	})
}

// sandboxJSON is E2B's Sandbox (create and connect answers).
type sandboxJSON struct {
	TemplateID      string  `json:"templateID"`
	SandboxID       string  `json:"sandboxID"`
	ClientID        string  `json:"clientID"`
	EnvdVersion     string  `json:"envdVersion"`
	EnvdAccessToken string  `json:"envdAccessToken,omitempty"`
	Domain          *string `json:"domain"`
}

// detailJSON is E2B's SandboxDetail and ListedSandbox.
type detailJSON struct {
	TemplateID      string            `json:"templateID"`
	SandboxID       string            `json:"sandboxID"`
	ClientID        string            `json:"clientID"`
	StartedAt       time.Time         `json:"startedAt"`
	EndAt           time.Time         `json:"endAt"`
	EnvdVersion     string            `json:"envdVersion"`
	EnvdAccessToken string            `json:"envdAccessToken,omitempty"`
	Domain          *string           `json:"domain"`
	CPUCount        int               `json:"cpuCount"`
	MemoryMB        int               `json:"memoryMB"`
	DiskSizeMB      int               `json:"diskSizeMB"`
	Metadata        map[string]string `json:"metadata,omitempty"`
	State           string            `json:"state"`
}

// clientID is what E2B calls the node a sandbox runs on; it is not used
// by the SDKs.
const clientID = "tartarus"

func (h *Handler) domain() *string {
	if h.cfg.Domain == "" {
		return nil
	}
	return &h.cfg.Domain
}

// e2bState is a Tartarus state as E2B names it ("" when E2B has no name:
// the sandbox is gone or failed).
func e2bState(s tartarus.State) string {
	switch s {
	case tartarus.StateRunning, tartarus.StateCreating:
		return "running"
	case tartarus.StatePaused, tartarus.StateHibernated:
		return "paused"
	}
	return ""
}

func (h *Handler) sandbox(sb *tartarus.Sandbox, key string) sandboxJSON {
	return sandboxJSON{TemplateID: h.e2bTemplate(sb.Template), SandboxID: sb.ID, ClientID: clientID,
		EnvdVersion: EnvdVersion, EnvdAccessToken: key, Domain: h.domain()}
}

func (h *Handler) detail(sb *tartarus.Sandbox, key string) detailJSON {
	end := sb.ExpiresAt
	if end.IsZero() {
		end = sb.CreatedAt.Add(100 * 365 * 24 * time.Hour) // never: far away, as E2B has no word for it
	}
	return detailJSON{TemplateID: h.e2bTemplate(sb.Template), SandboxID: sb.ID, ClientID: clientID,
		StartedAt: sb.CreatedAt, EndAt: end, EnvdVersion: EnvdVersion, EnvdAccessToken: key, Domain: h.domain(),
		CPUCount: sb.CPUs, MemoryMB: sb.MemoryMB, Metadata: sb.Metadata, State: e2bState(sb.State)}
}

// tartarusTemplate maps an E2B template name (or id) onto Tartarus's.
func (h *Handler) tartarusTemplate(name string) string {
	if t, ok := h.cfg.Templates[name]; ok {
		return t
	}
	return name
}

// e2bTemplate is the E2B name of a Tartarus template: the first (in
// sorted order) E2B name mapped onto it, or its own name.
func (h *Handler) e2bTemplate(name string) string {
	best := ""
	for k, v := range h.cfg.Templates {
		if v == name && (best == "" || k < best) {
			best = k
		}
	}
	if best == "" {
		return name
	}
	return best
}

// control starts a control-plane call: the caller's client, or an answered
// 401 (nil).
func (h *Handler) control(w http.ResponseWriter, r *http.Request) (*client.Client, string) {
	key := apiKey(r)
	if key == "" {
		writeJSON(w, http.StatusUnauthorized, apiError{Code: 401, Message: "no API key: send it in the X-API-Key header"})
		return nil, ""
	}
	return h.nativeClient(r, key), key
}

// decodeBody reads a JSON body (at most 1 MiB) into v; an empty body
// leaves v as it is. Unknown fields are allowed: the SDKs send options
// Tartarus does not act on.
func decodeBody(r *http.Request, v any) error {
	data, err := io.ReadAll(io.LimitReader(r.Body, 1<<20+1))
	if err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "read body: %v", err)
	}
	if len(data) > 1<<20 {
		return tartarus.Errorf(tartarus.ErrTooLarge, "body over 1 MiB")
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		return nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "body: %v", err)
	}
	return nil
}

// newSandbox is E2B's NewSandbox, the fields Tartarus acts on.
type newSandbox struct {
	TemplateID string            `json:"templateID"`
	Timeout    *int              `json:"timeout"`
	Metadata   map[string]string `json:"metadata"`
	EnvVars    map[string]string `json:"envVars"`
}

// defaultTimeoutS is E2B's default sandbox lifetime.
const defaultTimeoutS = 15

func (h *Handler) create(w http.ResponseWriter, r *http.Request) {
	c, key := h.control(w, r)
	if c == nil {
		return
	}
	var in newSandbox
	if err := decodeBody(r, &in); err != nil {
		h.fail(w, r, err)
		return
	}
	if in.TemplateID == "" {
		h.fail(w, r, tartarus.Errorf(tartarus.ErrInvalid, "templateID is required"))
		return
	}
	timeout := defaultTimeoutS
	if in.Timeout != nil {
		timeout = *in.Timeout
	}
	if timeout <= 0 {
		h.fail(w, r, tartarus.Errorf(tartarus.ErrInvalid, "timeout %d: must be a positive number of seconds", timeout))
		return
	}
	sb, err := c.CreateSandbox(r.Context(), &tartarus.CreateRequest{Template: h.tartarusTemplate(in.TemplateID),
		TimeoutS: timeout, Env: in.EnvVars, Metadata: in.Metadata})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, h.sandbox(sb, key))
}

// list returns the caller's sandboxes in the given E2B states whose
// metadata holds every pair of the E2B metadata query ("k=v&k2=v2").
func (h *Handler) list(w http.ResponseWriter, r *http.Request, states []string) ([]detailJSON, bool) {
	c, _ := h.control(w, r)
	if c == nil {
		return nil, false
	}
	q := url.Values{}
	if m := r.URL.Query().Get("metadata"); m != "" {
		q.Set("metadata", m)
	}
	var out api.SandboxList
	if err := c.Call(r.Context(), "GET", "/v1/sandboxes", q, nil, &out); err != nil {
		h.fail(w, r, err)
		return nil, false
	}
	list := []detailJSON{}
	for _, sb := range out.Sandboxes {
		if st := e2bState(sb.State); st != "" && slices.Contains(states, st) {
			list = append(list, h.detail(sb, ""))
		}
	}
	slices.SortFunc(list, func(a, b detailJSON) int { return b.StartedAt.Compare(a.StartedAt) })
	return list, true
}

func (h *Handler) listV1(w http.ResponseWriter, r *http.Request) {
	if list, ok := h.list(w, r, []string{"running"}); ok {
		writeJSON(w, http.StatusOK, list)
	}
}

func (h *Handler) listV2(w http.ResponseWriter, r *http.Request) {
	states := []string{"running", "paused"}
	if s := r.URL.Query().Get("state"); s != "" {
		states = nil
		for _, st := range strings.Split(s, ",") {
			if st != "running" && st != "paused" {
				h.fail(w, r, tartarus.Errorf(tartarus.ErrInvalid, "state %q: want running or paused", st))
				return
			}
			states = append(states, st)
		}
	}
	list, ok := h.list(w, r, states)
	if !ok {
		return
	}
	// Pages: nextToken is the offset of the next page.
	limit, offset := 100, 0
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 100 {
			h.fail(w, r, tartarus.Errorf(tartarus.ErrInvalid, "limit %q: want 1-100", s))
			return
		}
		limit = n
	}
	if s := r.URL.Query().Get("nextToken"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			h.fail(w, r, tartarus.Errorf(tartarus.ErrInvalid, "nextToken %q: not one this server gave", s))
			return
		}
		offset = min(n, len(list))
	}
	page := list[offset:]
	if len(page) > limit {
		page = page[:limit]
		w.Header().Set("X-Next-Token", strconv.Itoa(offset+limit))
	}
	writeJSON(w, http.StatusOK, page)
}

func (h *Handler) get(w http.ResponseWriter, r *http.Request) {
	c, key := h.control(w, r)
	if c == nil {
		return
	}
	sb, err := c.GetSandbox(r.Context(), r.PathValue("id"))
	if err == nil && e2bState(sb.State) == "" {
		err = tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s is %s", sb.ID, sb.State)
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, h.detail(sb, key))
}

func (h *Handler) kill(w http.ResponseWriter, r *http.Request) {
	c, _ := h.control(w, r)
	if c == nil {
		return
	}
	id := r.PathValue("id")
	if _, err := c.DeleteSandbox(r.Context(), id); err != nil {
		h.fail(w, r, err)
		return
	}
	h.ptys.closeSandbox(id)
	h.watchers.closeSandbox(id)
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) pause(w http.ResponseWriter, r *http.Request) {
	c, _ := h.control(w, r)
	if c == nil {
		return
	}
	id := r.PathValue("id")
	sb, err := c.GetSandbox(r.Context(), id)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if e2bState(sb.State) == "paused" {
		writeJSON(w, http.StatusConflict, apiError{Code: 409, Message: "sandbox " + id + " is already paused"})
		return
	}
	if _, err := c.Pause(r.Context(), id); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// connectBody is E2B's ConnectSandbox and ResumedSandbox.
type connectBody struct {
	Timeout *int `json:"timeout"`
}

// connect resumes a paused sandbox (201) or answers a running one (200),
// setting its timeout when the body gives one.
func (h *Handler) connect(w http.ResponseWriter, r *http.Request) {
	c, key := h.control(w, r)
	if c == nil {
		return
	}
	var in connectBody
	if err := decodeBody(r, &in); err != nil {
		h.fail(w, r, err)
		return
	}
	if in.Timeout != nil && *in.Timeout <= 0 {
		h.fail(w, r, tartarus.Errorf(tartarus.ErrInvalid, "timeout %d: must be a positive number of seconds", *in.Timeout))
		return
	}
	id := r.PathValue("id")
	sb, err := c.GetSandbox(r.Context(), id)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	status := http.StatusOK
	switch sb.State {
	case tartarus.StatePaused:
		sb, err = c.Resume(r.Context(), id)
		status = http.StatusCreated
	case tartarus.StateHibernated:
		sb, err = c.Wake(r.Context(), id)
		status = http.StatusCreated
	case tartarus.StateRunning, tartarus.StateCreating:
	default:
		err = tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s is %s", id, sb.State)
	}
	if err == nil && in.Timeout != nil {
		sb, err = c.SetTimeout(r.Context(), id, *in.Timeout)
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, status, h.sandbox(sb, key))
}

func (h *Handler) timeout(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Timeout *int `json:"timeout"`
	}
	h.setTimeout(w, r, &in, func() *int { return in.Timeout })
}

// refresh extends a sandbox's life by duration seconds from now (E2B's
// default is 60).
func (h *Handler) refresh(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Duration *int `json:"duration"`
	}
	h.setTimeout(w, r, &in, func() *int {
		if in.Duration == nil {
			d := 60
			return &d
		}
		return in.Duration
	})
}

func (h *Handler) setTimeout(w http.ResponseWriter, r *http.Request, body any, seconds func() *int) {
	c, _ := h.control(w, r)
	if c == nil {
		return
	}
	if err := decodeBody(r, body); err != nil {
		h.fail(w, r, err)
		return
	}
	s := seconds()
	if s == nil || *s <= 0 {
		h.fail(w, r, tartarus.Errorf(tartarus.ErrInvalid, "a positive number of seconds is required"))
		return
	}
	if _, err := c.SetTimeout(r.Context(), r.PathValue("id"), *s); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// metricJSON is E2B's SandboxMetric (sizes in bytes).
type metricJSON struct {
	Timestamp     time.Time `json:"timestamp"`
	TimestampUnix int64     `json:"timestampUnix"`
	CPUCount      int       `json:"cpuCount"`
	CPUUsedPct    float64   `json:"cpuUsedPct"`
	MemUsed       int64     `json:"memUsed"`
	MemTotal      int64     `json:"memTotal"`
	DiskUsed      int64     `json:"diskUsed"`
	DiskTotal     int64     `json:"diskTotal"`
}

func (h *Handler) metrics(w http.ResponseWriter, r *http.Request) {
	c, _ := h.control(w, r)
	if c == nil {
		return
	}
	var start, end int64
	for name, dst := range map[string]*int64{"start": &start, "end": &end} {
		if s := r.URL.Query().Get(name); s != "" {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n < 0 {
				h.fail(w, r, tartarus.Errorf(tartarus.ErrInvalid, "%s %q: want Unix seconds", name, s))
				return
			}
			*dst = n
		}
	}
	samples, err := c.Metrics(r.Context(), r.PathValue("id"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := []metricJSON{}
	const mb = 1 << 20
	for _, s := range samples {
		u := s.At.Unix()
		if (start > 0 && u < start) || (end > 0 && u > end) {
			continue
		}
		out = append(out, metricJSON{Timestamp: s.At, TimestampUnix: u, CPUCount: s.CPUCount, CPUUsedPct: s.CPUPercent,
			MemUsed: int64(s.MemoryUsedMB) * mb, MemTotal: int64(s.MemoryTotalMB) * mb,
			DiskUsed: int64(s.DiskUsedMB) * mb, DiskTotal: int64(s.DiskTotalMB) * mb})
	}
	writeJSON(w, http.StatusOK, out)
}

// forkResult is one entry of E2B's fork answer: a sandbox or an error.
type forkResult struct {
	Sandbox *sandboxJSON `json:"sandbox,omitempty"`
	Error   *apiError    `json:"error,omitempty"`
}

// fork copies a running sandbox (memory, processes, files) count times
// with Tartarus's fork; the copies get the timeout asked for, if any.
func (h *Handler) fork(w http.ResponseWriter, r *http.Request) {
	c, key := h.control(w, r)
	if c == nil {
		return
	}
	var in struct {
		Timeout *int `json:"timeout"`
		Count   *int `json:"count"`
	}
	if err := decodeBody(r, &in); err != nil {
		h.fail(w, r, err)
		return
	}
	count := 1
	if in.Count != nil {
		count = *in.Count
	}
	if count < 1 || count > api.MaxForkCount {
		h.fail(w, r, tartarus.Errorf(tartarus.ErrInvalid, "count %d: want 1-%d", count, api.MaxForkCount))
		return
	}
	if in.Timeout != nil && *in.Timeout <= 0 {
		h.fail(w, r, tartarus.Errorf(tartarus.ErrInvalid, "timeout %d: must be a positive number of seconds", *in.Timeout))
		return
	}
	copies, err := c.Fork(r.Context(), r.PathValue("id"), count)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := make([]forkResult, 0, len(copies))
	for _, sb := range copies {
		if in.Timeout != nil {
			if _, err := c.SetTimeout(r.Context(), sb.ID, *in.Timeout); err != nil {
				status, msg := h.classify(r, err)
				out = append(out, forkResult{Error: &apiError{Code: status, Message: msg}})
				continue
			}
		}
		j := h.sandbox(sb, key)
		out = append(out, forkResult{Sandbox: &j})
	}
	writeJSON(w, http.StatusCreated, out)
}
