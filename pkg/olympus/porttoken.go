package olympus

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strings"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// A port access token lets its holder reach one sandbox's exposed ports
// without the tenant's credentials: a link to share, a browser tab. It is
// an HMAC of the sandbox's id under the server's key, so nothing is stored,
// it is the same every time it is asked for, and it dies with the sandbox
// (ids are never reused). It cannot be revoked alone: rotating the key
// (--port-token-key-file) revokes every sandbox's.
const (
	// PortTokenHeader carries a token on any request to a port route.
	PortTokenHeader = "X-Tartarus-Port-Token"
	// PortTokenParam carries a token in the query, once: the answer sets
	// PortTokenCookie and, for GET and HEAD, redirects to the same URL
	// without it. Not "token", which the guest's own app may use.
	PortTokenParam = "tartarus_token"
	// PortTokenCookie carries a token set from the query.
	PortTokenCookie = "tartarus_port_token"
	// MinPortTokenKey is the shortest key Config.PortTokenKey may be.
	MinPortTokenKey = 32
)

type portTokens struct{ key []byte }

// token is the sandbox's port access token.
func (p *portTokens) token(id string) string {
	m := hmac.New(sha256.New, p.key)
	m.Write([]byte("tartarus port token v1\x00" + id))
	return "tpt_" + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (p *portTokens) valid(id, tok string) bool {
	return p != nil && tok != "" && hmac.Equal([]byte(tok), []byte(p.token(id)))
}

// tokenSource says where a request's port token came from.
type tokenSource int

const (
	tokenNone tokenSource = iota
	tokenHeader
	tokenQuery
	tokenCookie
)

// portTokenFor finds a valid port token for sandbox id in the request:
// header, then query, then every cookie of our name (a guest on another
// sandbox's host may set one for the parent domain; it must not shadow
// this sandbox's own).
func (p *portTokens) portTokenFor(r *http.Request, id string) (string, tokenSource, bool) {
	if p == nil {
		return "", tokenNone, false
	}
	if t := r.Header.Get(PortTokenHeader); t != "" && p.valid(id, t) {
		return t, tokenHeader, true
	}
	if t := r.URL.Query().Get(PortTokenParam); t != "" && p.valid(id, t) {
		return t, tokenQuery, true
	}
	for _, c := range r.Cookies() {
		if c.Name == PortTokenCookie && p.valid(id, c.Value) {
			return c.Value, tokenCookie, true
		}
	}
	return "", tokenNone, false
}

// stripPortToken removes every trace of a port token from r, which goes
// on to the guest. (Authorization is the guest app's own unless the caller
// used it with us; proxyPort drops it then.)
func stripPortToken(r *http.Request) {
	r.Header.Del(PortTokenHeader)
	if q := r.URL.Query(); q.Has(PortTokenParam) {
		q.Del(PortTokenParam)
		r.URL.RawQuery = q.Encode()
	}
	if cs := r.Cookies(); len(cs) > 0 {
		r.Header.Del("Cookie")
		for _, c := range cs {
			if c.Name != PortTokenCookie {
				r.AddCookie(c)
			}
		}
	}
}

// acceptQueryToken sets the cookie for a token that came in the query and,
// for GET and HEAD, redirects to the URL without it (so it leaves the
// address bar and the guest's logs); it reports whether it answered.
func acceptQueryToken(w http.ResponseWriter, r *http.Request, id, tok string) bool {
	path := "/"
	if p := "/v1/sandboxes/" + id + "/ports/"; strings.HasPrefix(r.URL.Path, p) {
		path = p // the path routes: this sandbox's ports only
	}
	http.SetCookie(w, &http.Cookie{Name: PortTokenCookie, Value: tok, Path: path,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode})
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	u := *r.URL
	q := u.Query()
	q.Del(PortTokenParam)
	u.RawQuery = q.Encode()
	http.Redirect(w, r, u.RequestURI(), http.StatusSeeOther)
	return true
}

// portTokenKeeper is serve's side for the token route: 501 without a key.
func portTokenKeeper(s *Server) (*portTokens, error) {
	if s.tokens == nil {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "port access tokens are not enabled on this server")
	}
	return s.tokens, nil
}

// getPortToken serves GET /v1/sandboxes/{id}/ports/token to whoever may
// reach the sandbox's ports with credentials.
func (s *Server) getPortToken(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.reach, cerberus.ActionUpdate, portTokenKeeper, func(_ context.Context, p *portTokens, sb *tartarus.Sandbox) (int, any, error) {
		return http.StatusOK, api.PortToken{SandboxID: sb.ID, Token: p.token(sb.ID),
			Header: PortTokenHeader, QueryParam: PortTokenParam}, nil
	})
}
