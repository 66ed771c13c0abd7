package cerberus

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// Routes are the API routes Cerberus serves itself. The server mounts them
// behind Guard().Wrap, like every /v1 route.
//
//	POST   /v1/apikeys       {"tenant","roles","name","expires_in":"30d"} → 201 {"api_key":…,"secret":"tk_…"} (the secret is shown only here)
//	GET    /v1/apikeys       ?tenant=T|* → {"api_keys":[…]} (no secrets)
//	DELETE /v1/apikeys/{id}  → 200 the revoked key
//	GET    /v1/audit         ?tenant=&identity=&result=&since=RFC3339&limit= → {"entries":[…]}
func (c *Cerberus) Routes() map[string]http.Handler {
	routes := map[string]http.Handler{"GET /v1/audit": http.HandlerFunc(c.serveAudit)}
	if c.cfg.Keys != nil {
		routes["POST /v1/apikeys"] = http.HandlerFunc(c.serveCreateKey)
		routes["GET /v1/apikeys"] = http.HandlerFunc(c.serveListKeys)
		routes["DELETE /v1/apikeys/{id}"] = http.HandlerFunc(c.serveRevokeKey)
	}
	return routes
}

var tenantName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

type createKeyRequest struct {
	Name      string     `json:"name"`
	Tenant    string     `json:"tenant"`
	Roles     []string   `json:"roles"`
	ExpiresIn string     `json:"expires_in"` // "30d", "12h", "2w"
	ExpiresAt *time.Time `json:"expires_at"`
}

type createKeyResponse struct {
	APIKey APIKey `json:"api_key"`
	Secret string `json:"secret"`
}

func (c *Cerberus) serveCreateKey(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id := IdentityFrom(ctx)
	var req createKeyRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeClassError(w, tartarus.Errorf(tartarus.ErrInvalid, "api key request: %v", err))
		return
	}
	if req.Tenant == "" {
		req.Tenant = id.TenantID
	}
	res := Resource{Type: ResourceTypeAPIKey, TenantID: req.Tenant}
	if err := c.Authorize(ctx, id, ActionCreate, res); err != nil {
		writeClassError(w, err)
		return
	}
	var problems []string
	if !tenantName.MatchString(req.Tenant) {
		problems = append(problems, fmt.Sprintf("tenant %q is not a valid name", req.Tenant))
	}
	if len(req.Roles) == 0 {
		problems = append(problems, "at least one role is needed")
	}
	if len(req.Name) > 128 {
		problems = append(problems, "name is longer than 128 characters")
	}
	pol := c.Policy()
	held := pol.RolesOf(id)
	mayGrantAny := pol.Decide(id, ActionAdmin, res).Allowed
	for _, role := range req.Roles {
		switch {
		case !pol.HasRole(role):
			problems = append(problems, fmt.Sprintf("role %q is not in the policy", role))
		case !mayGrantAny && !slices.Contains(held, role):
			writeClassError(w, tartarus.Errorf(tartarus.ErrPermissionDenied, "%s may not grant role %q it does not hold", Principal(id), role))
			noteFrom(ctx).record(ActionCreate, res, Decision{Reason: fmt.Sprintf("denied: %s may not grant role %q it does not hold", Principal(id), role)})
			return
		}
	}
	var expires time.Time
	switch {
	case req.ExpiresAt != nil && req.ExpiresIn != "":
		problems = append(problems, "give expires_in or expires_at, not both")
	case req.ExpiresAt != nil:
		expires = *req.ExpiresAt
	case req.ExpiresIn != "":
		d, err := ParseTTL(req.ExpiresIn)
		if err != nil {
			problems = append(problems, err.Error())
		}
		expires = c.cfg.Clock.Now().Add(d)
	}
	if len(problems) > 0 {
		writeClassError(w, tartarus.Errorf(tartarus.ErrInvalid, "%s", strings.Join(problems, "; ")))
		return
	}
	// A key made with an expiring key expires no later than its maker, so a
	// short-lived key cannot mint itself a permanent successor.
	if id.Attributes["auth_method"] == "api_key" && !id.ExpiresAt.IsZero() && (expires.IsZero() || expires.After(id.ExpiresAt)) {
		expires = id.ExpiresAt
	}
	k, secret, err := c.cfg.Keys.Create(ctx, KeySpec{
		Name: req.Name, TenantID: req.Tenant, Roles: req.Roles, ExpiresAt: expires, CreatedBy: Principal(id),
	})
	if err != nil {
		writeClassError(w, err)
		return
	}
	c.log.Info("api key created", "key_id", k.ID, "tenant", k.TenantID, "roles", k.Roles, "by", Principal(id))
	writeJSON(w, http.StatusCreated, createKeyResponse{APIKey: k, Secret: string(secret)})
}

func (c *Cerberus) serveListKeys(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id := IdentityFrom(ctx)
	tenant := r.URL.Query().Get("tenant")
	if tenant == "" {
		tenant = id.TenantID
	}
	if err := c.Authorize(ctx, id, ActionRead, Resource{Type: ResourceTypeAPIKey, TenantID: tenant}); err != nil {
		writeClassError(w, err)
		return
	}
	keys, err := c.cfg.Keys.List(ctx, tenant)
	if err != nil {
		c.log.Error("list api keys", "tenant", tenant, "err", err)
		writeClassError(w, err)
		return
	}
	if keys == nil {
		keys = []APIKey{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"api_keys": keys})
}

func (c *Cerberus) serveRevokeKey(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id := IdentityFrom(ctx)
	keyID := r.PathValue("id")
	if keyID == "" {
		keyID = r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
	}
	keyID = strings.TrimPrefix(keyID, KeyPrefix)
	k, err := c.cfg.Keys.Get(ctx, keyID)
	if err != nil {
		Annotate(ctx, ActionDelete, Resource{Type: ResourceTypeAPIKey, ID: keyID})
		writeClassError(w, err)
		return
	}
	res := Resource{Type: ResourceTypeAPIKey, ID: k.ID, TenantID: k.TenantID}
	if err := c.Authorize(ctx, id, ActionDelete, res); err != nil {
		if k.TenantID != id.TenantID {
			// Another tenant's key: answer as if it did not exist.
			err = tartarus.Errorf(tartarus.ErrNotFound, "api key %s", keyID)
		}
		writeClassError(w, err)
		return
	}
	k, err = c.cfg.Keys.Revoke(ctx, k.ID)
	if err != nil {
		writeClassError(w, err)
		return
	}
	c.log.Info("api key revoked", "key_id", k.ID, "tenant", k.TenantID, "by", Principal(id))
	writeJSON(w, http.StatusOK, k)
}

func (c *Cerberus) serveAudit(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id := IdentityFrom(ctx)
	q := r.URL.Query()
	f := AuditFilter{Tenant: q.Get("tenant"), Identity: q.Get("identity"), Result: AuditResult(q.Get("result"))}
	if f.Tenant == "" {
		f.Tenant = id.TenantID
	}
	if err := c.Authorize(ctx, id, ActionRead, Resource{Type: ResourceTypeAudit, TenantID: f.Tenant}); err != nil {
		writeClassError(w, err)
		return
	}
	var problems []string
	switch f.Result {
	case "", AuditResultSuccess, AuditResultDenied, AuditResultError:
	default:
		problems = append(problems, fmt.Sprintf("result %q is not success, denied or error", f.Result))
	}
	if s := q.Get("since"); s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			problems = append(problems, fmt.Sprintf("since %q is not an RFC 3339 time", s))
		}
		f.Since = t
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 10000 {
			problems = append(problems, fmt.Sprintf("limit %q is not a number from 1 to 10000", s))
		}
		f.Limit = n
	}
	if len(problems) > 0 {
		writeClassError(w, tartarus.Errorf(tartarus.ErrInvalid, "%s", strings.Join(problems, "; ")))
		return
	}
	entries, err := c.cfg.Audit.Query(ctx, f)
	if err != nil {
		writeClassError(w, err)
		return
	}
	if entries == nil {
		entries = []AuditRecord{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"entries": entries})
}

// ParseTTL reads a lifetime such as "30d", "2w", "12h" or "90m".
func ParseTTL(s string) (time.Duration, error) {
	var d time.Duration
	var err error
	switch {
	case strings.HasSuffix(s, "d"), strings.HasSuffix(s, "w"):
		n, perr := strconv.Atoi(s[:len(s)-1])
		unit := 24 * time.Hour
		if strings.HasSuffix(s, "w") {
			unit *= 7
		}
		if perr != nil || n > 100*365 {
			err = perr
			if err == nil {
				err = errors.New("too long")
			}
		}
		d = time.Duration(n) * unit
	default:
		d, err = time.ParseDuration(s)
	}
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("lifetime %q is not a positive duration like 30d, 2w or 12h", s)
	}
	return d, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// writeClassError answers err for Cerberus's own routes through the one
// error table (api.WriteError), as the rest of the API does.
func writeClassError(w http.ResponseWriter, err error) { api.WriteError(w, err, "") }
