package link

import (
	"encoding/json"
	"io"
	"net/http"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// Tenant templates on a cluster (wire.PathShareTemplate): a replica that
// had this agent save, build or import a template version asks it to
// upload the version to the shared store and records what it answers; a
// replica deleting a version asks every agent to drop its copy, and one
// of them to delete the shared objects.
const (
	sharePattern   = "POST /v1/node/templates/{version}"
	unsharePattern = "DELETE /v1/node/templates/{version}"
	fetchPattern   = "POST /v1/node/templates/{version}/fetch"
)

// shareHandler serves POST wire.PathShareTemplate: the version must be the
// tenant's the replica named.
func shareHandler(agent *hecatoncheir.Agent) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		version := r.PathValue("version")
		who := cerberus.IdentityFrom(r.Context())
		img, err := agent.Template(r.Context(), version)
		if err == nil && (who == nil || img.Tenant != who.TenantID) {
			err = tartarus.Errorf(tartarus.ErrNotFound, "template %s", version)
		}
		if err != nil {
			api.WriteError(w, err, "")
			return
		}
		st, err := agent.ShareTemplate(r.Context(), version)
		if err != nil {
			api.WriteError(w, err, "")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(st)
	}
}

// unshareHandler serves DELETE wire.PathShareTemplate[?objects=1].
func unshareHandler(agent *hecatoncheir.Agent) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		who := cerberus.IdentityFrom(r.Context())
		if who == nil || who.TenantID == "" {
			api.WriteError(w, tartarus.Errorf(tartarus.ErrPermissionDenied, "no tenant"), "")
			return
		}
		err := agent.UnshareTemplate(r.Context(), who.TenantID, r.PathValue("version"), r.URL.Query().Get("objects") == "1")
		if err != nil {
			api.WriteError(w, err, "")
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

// maxSharedRecord bounds a fetch request's body (a wire.SharedTemplate).
const maxSharedRecord = 1 << 20

// fetchHandler serves POST wire.PathFetchTemplate[?ref=NAME:TAG]: the
// agent fetches the version the body describes (the tenant's the replica
// named) and, with ref, points its own tag ref at it, so that a build
// forwarded here next finds FROM ref as the cluster has it.
func fetchHandler(agent *hecatoncheir.Agent) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		who := cerberus.IdentityFrom(r.Context())
		var st wire.SharedTemplate
		if err := json.NewDecoder(io.LimitReader(r.Body, maxSharedRecord)).Decode(&st); err != nil {
			api.WriteError(w, tartarus.Errorf(tartarus.ErrInvalid, "shared template: %v", err), "")
			return
		}
		if who == nil || st.Image.Tenant != who.TenantID || st.Image.Name != r.PathValue("version") {
			api.WriteError(w, tartarus.Errorf(tartarus.ErrPermissionDenied, "the template is not the tenant's, or not the version named"), "")
			return
		}
		err := agent.FetchTemplate(r.Context(), &st)
		if ref := r.URL.Query().Get("ref"); err == nil && ref != "" {
			_, err = agent.TagTemplate(r.Context(), ref, st.Image.Name)
		}
		if err != nil {
			api.WriteError(w, err, "")
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}
