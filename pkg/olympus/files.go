package olympus

import (
	"context"
	"io"
	"net/http"
	"os"
	"strconv"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

func (s *Server) putFile(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.sandboxFor, cerberus.ActionWriteFiles, backend, func(ctx context.Context, be Backend, sb *tartarus.Sandbox) (int, any, error) {
		p, err := sandboxPath(r.URL.Query().Get("path"))
		if err != nil {
			return 0, nil, err
		}
		mode := os.FileMode(0o644)
		if m := r.URL.Query().Get("mode"); m != "" {
			v, err := strconv.ParseUint(m, 8, 32)
			if err != nil || v > 0o7777 {
				return 0, nil, tartarus.Errorf(tartarus.ErrInvalid, "mode %q: want octal permission bits like 0644", m)
			}
			mode = os.FileMode(v)
		}
		if r.ContentLength > s.cfg.MaxUploadBytes {
			return 0, nil, tooLarge(s.cfg.MaxUploadBytes)
		}
		if err := s.usable(r, sb); err != nil {
			return 0, nil, err
		}
		body := &limitedBody{r: http.MaxBytesReader(w, r.Body, s.cfg.MaxUploadBytes)}
		err = be.WriteFile(ctx, sb.ID, p, mode, body)
		if body.overflow {
			// Whatever the runtime made of the cut stream, the answer is 413.
			err = tooLarge(s.cfg.MaxUploadBytes)
		}
		return http.StatusNoContent, nil, err
	})
}

func tooLarge(limit int64) error {
	return &http.MaxBytesError{Limit: limit}
}

// limitedBody remembers whether the upload hit its limit, since runtimes
// may not keep the reader's error in the chain they return.
type limitedBody struct {
	r        io.Reader
	overflow bool
}

func (b *limitedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if _, ok := err.(*http.MaxBytesError); ok {
		b.overflow = true
	}
	return n, err
}

func (s *Server) getFile(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.sandboxFor, cerberus.ActionReadFiles, backend, func(ctx context.Context, be Backend, sb *tartarus.Sandbox) (int, any, error) {
		p, err := sandboxPath(r.URL.Query().Get("path"))
		if err != nil {
			return 0, nil, err
		}
		if err := s.usable(r, sb); err != nil {
			return 0, nil, err
		}
		if list, _ := strconv.ParseBool(r.URL.Query().Get("list")); list {
			if s.listDepth(w, r, sb, p) {
				return 0, nil, nil
			}
			files, err := be.ListFiles(ctx, sb.ID, p)
			if files == nil {
				files = []tartarus.FileInfo{}
			}
			return http.StatusOK, api.FileList{Path: p, Files: files}, err
		}
		rc, err := be.ReadFile(ctx, sb.ID, p)
		if err != nil {
			return 0, nil, err
		}
		defer rc.Close()
		w.Header().Set("Content-Type", "application/octet-stream")
		w.WriteHeader(http.StatusOK)
		if _, err := io.Copy(w, rc); err != nil {
			// Headers are gone; cutting the connection tells the client the
			// body is incomplete.
			s.log.Warn("file download cut", "request_id", requestID(ctx), "sandbox", sb.ID, "err", err)
			panic(http.ErrAbortHandler)
		}
		return 0, nil, nil
	})
}
