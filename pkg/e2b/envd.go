package e2b

import (
	"compress/gzip"
	"context"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path"
	"strconv"
	"strings"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// envdCall is one envd request: the sandbox it is for and a client that
// acts with the caller's token.
type envdCall struct {
	h  *Handler
	c  *client.Client
	id string
}

// serveEnvd answers an envd request for sandbox id.
func (h *Handler) serveEnvd(w http.ResponseWriter, r *http.Request, id string) {
	token := accessToken(r)
	rpc := strings.HasPrefix(r.URL.Path, "/process.Process/") || strings.HasPrefix(r.URL.Path, "/filesystem.Filesystem/")
	if token == "" {
		if rpc {
			writeRPCError(w, &rpcError{Code: "unauthenticated", Message: "no access token: send it in the X-Access-Token header"})
		} else {
			writeJSON(w, http.StatusUnauthorized, apiError{Code: 401, Message: "no access token: send it in the X-Access-Token header"})
		}
		return
	}
	e := &envdCall{h: h, c: h.nativeClient(r, token), id: id}
	switch {
	case rpc && r.Method == http.MethodPost:
		e.serveRPC(w, r, token)
	case r.URL.Path == "/files" && r.Method == http.MethodGet:
		e.readFile(w, r)
	case r.URL.Path == "/files" && r.Method == http.MethodPost:
		e.writeFiles(w, r)
	case r.URL.Path == "/health" && r.Method == http.MethodGet:
		e.health(w, r)
	default:
		writeJSON(w, http.StatusNotFound, apiError{Code: 404, Message: r.Method + " " + r.URL.Path + " is not part of envd as served by Tartarus"})
	}
}

func (e *envdCall) serveRPC(w http.ResponseWriter, r *http.Request, token string) {
	h := e.h
	switch strings.TrimPrefix(r.URL.Path, "/") {
	case "process.Process/Start":
		serverStream(h, w, r, func(ctx context.Context, in *startRequest, s *stream) error { return e.start(ctx, token, in, s) })
	case "process.Process/Connect":
		serverStream(h, w, r, func(ctx context.Context, in *connectRequest, s *stream) error {
			return e.connectProcess(ctx, token, in, s)
		})
	case "process.Process/List":
		unary(h, w, r, e.listProcesses)
	case "process.Process/SendInput":
		unary(h, w, r, func(ctx context.Context, in *sendInputRequest) (any, error) { return e.sendInput(ctx, token, in) })
	case "process.Process/SendSignal":
		unary(h, w, r, func(ctx context.Context, in *sendSignalRequest) (any, error) { return e.sendSignal(ctx, token, in) })
	case "process.Process/CloseStdin":
		unary(h, w, r, e.closeStdin)
	case "process.Process/Update":
		unary(h, w, r, func(ctx context.Context, in *updateRequest) (any, error) { return e.update(ctx, token, in) })
	case "filesystem.Filesystem/Stat":
		unary(h, w, r, e.stat)
	case "filesystem.Filesystem/MakeDir":
		unary(h, w, r, e.makeDir)
	case "filesystem.Filesystem/Move":
		unary(h, w, r, e.move)
	case "filesystem.Filesystem/ListDir":
		unary(h, w, r, e.listDir)
	case "filesystem.Filesystem/Remove":
		unary(h, w, r, e.remove)
	case "filesystem.Filesystem/WatchDir":
		serverStream(h, w, r, e.watchDir)
	case "filesystem.Filesystem/CreateWatcher":
		unary(h, w, r, func(ctx context.Context, in *watchDirRequest) (any, error) { return e.createWatcher(ctx, token, in) })
	case "filesystem.Filesystem/GetWatcherEvents":
		unary(h, w, r, func(ctx context.Context, in *watcherRequest) (any, error) { return e.getWatcherEvents(ctx, token, in) })
	case "filesystem.Filesystem/RemoveWatcher":
		unary(h, w, r, func(ctx context.Context, in *watcherRequest) (any, error) { return e.removeWatcher(ctx, token, in) })
	default:
		writeRPCError(w, &rpcError{Code: "unimplemented", Message: r.URL.Path + " is not served by Tartarus (docs/e2b.md)"})
	}
}

// abs resolves p against the home directory, as envd resolves a relative
// path against the user's.
func (e *envdCall) abs(p string) string {
	if p == "" {
		return e.h.cfg.Home
	}
	if !strings.HasPrefix(p, "/") {
		p = e.h.cfg.Home + "/" + p
	}
	return path.Clean(p)
}

// health answers 204 while the sandbox runs and 502 otherwise, as envd's
// proxy does.
func (e *envdCall) health(w http.ResponseWriter, r *http.Request) {
	sb, err := e.c.GetSandbox(r.Context(), e.id)
	if err != nil || sb.State != tartarus.StateRunning {
		writeJSON(w, http.StatusBadGateway, apiError{Code: 502, Message: "sandbox " + e.id + " is not running"})
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (e *envdCall) readFile(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Query().Get("path")
	rc, err := e.c.ReadFile(r.Context(), e.id, e.abs(p))
	if err != nil {
		e.h.fail(w, r, err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("inline", map[string]string{"filename": path.Base(e.abs(p))}))
	w.WriteHeader(http.StatusOK)
	_, _ = io.Copy(w, rc)
}

// writeInfo is envd's EntryInfo of a written file.
type writeInfo struct {
	Name string `json:"name"`
	Type string `json:"type"`
	Path string `json:"path"`
}

// writeFiles stores the parts of a multipart upload (each part's file name
// is its path unless ?path= names it) or one raw body
// (application/octet-stream), making parent directories as envd does.
func (e *envdCall) writeFiles(w http.ResponseWriter, r *http.Request) {
	qpath := r.URL.Query().Get("path")
	body := io.Reader(r.Body)
	switch enc := r.Header.Get("Content-Encoding"); enc {
	case "", "identity":
	case "gzip":
		// The server's upload limit bounds what this inflates to.
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			e.h.fail(w, r, tartarus.Errorf(tartarus.ErrInvalid, "gzip body: %v", err))
			return
		}
		defer zr.Close()
		body = zr
	default:
		e.h.fail(w, r, tartarus.Errorf(tartarus.ErrInvalid, "content encoding %q: want gzip or none", enc))
		return
	}
	ct, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var out []writeInfo
	write := func(p string, body io.Reader) error {
		if p == "" {
			return tartarus.Errorf(tartarus.ErrInvalid, "no path: give ?path= or the part's file name")
		}
		p = e.abs(p)
		if dir := path.Dir(p); dir != "/" {
			if _, err := e.c.MakeDir(r.Context(), e.id, dir, true); err != nil {
				return err
			}
		}
		if err := e.c.WriteFile(r.Context(), e.id, p, 0o644, body); err != nil {
			return err
		}
		out = append(out, writeInfo{Name: path.Base(p), Type: "file", Path: p})
		return nil
	}
	var err error
	switch ct {
	case "multipart/form-data":
		mr := multipart.NewReader(body, params["boundary"])
		for {
			part, perr := mr.NextPart()
			if perr == io.EOF {
				break
			}
			if perr != nil {
				err = tartarus.Errorf(tartarus.ErrInvalid, "multipart body: %v", perr)
				break
			}
			if part.FormName() != "file" {
				continue
			}
			p := qpath
			if p == "" {
				// The file name is the whole path: read it raw, since
				// Part.FileName keeps only its last element.
				_, dp, _ := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
				p = dp["filename"]
			}
			if err = write(p, part); err != nil {
				break
			}
		}
	case "application/octet-stream":
		err = write(qpath, body)
	default:
		err = tartarus.Errorf(tartarus.ErrInvalid, "content type %q: want multipart/form-data or application/octet-stream", ct)
	}
	if err == nil && len(out) == 0 {
		err = tartarus.Errorf(tartarus.ErrInvalid, "no file in the upload")
	}
	if err != nil {
		e.h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// proxyPort passes a request for another port of a sandbox to Tartarus's
// exposed-port proxy, with the caller's credentials when it sent any.
func (h *Handler) proxyPort(w http.ResponseWriter, r *http.Request, id string, port int) {
	if port == 0 {
		writeJSON(w, http.StatusBadRequest, apiError{Code: 400, Message: "E2b-Sandbox-Port: want a port number 1-65535"})
		return
	}
	target, _ := url.Parse(localURL)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = target.Scheme, target.Host
			pr.Out.URL.Path = "/v1/sandboxes/" + url.PathEscape(id) + "/ports/" + strconv.Itoa(port) + pr.In.URL.Path
			pr.Out.URL.RawPath = ""
			pr.Out.Host = target.Host
			pr.Out.Header.Del("E2b-Sandbox-Id")
			pr.Out.Header.Del("E2b-Sandbox-Port")
			if k := accessToken(pr.In); k != "" && pr.In.Header.Get("Authorization") == "" {
				pr.Out.Header.Set("Authorization", "Bearer "+NativeKey(k))
			}
			pr.Out.Header.Set(remoteHeader, pr.In.RemoteAddr)
			pr.Out.Header.Del("X-Access-Token")
			pr.Out.Header.Del("X-API-Key")
		},
		Transport: h.local.client.Transport,
	}
	rp.ServeHTTP(w, r)
}
