package olympus

import (
	"io"
	"net/http"
	"os"
	"strconv"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

func (s *Server) putFile(w http.ResponseWriter, r *http.Request) {
	sb, err := s.sandboxFor(r, cerberus.ActionUpdate)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	p, err := sandboxPath(r.URL.Query().Get("path"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	mode := os.FileMode(0o644)
	if m := r.URL.Query().Get("mode"); m != "" {
		v, err := strconv.ParseUint(m, 8, 32)
		if err != nil || v > 0o7777 {
			s.writeError(w, r, tartarus.Errorf(tartarus.ErrInvalid, "mode %q: want octal permission bits like 0644", m))
			return
		}
		mode = os.FileMode(v)
	}
	if r.ContentLength > s.cfg.MaxUploadBytes {
		s.writeError(w, r, tooLarge(s.cfg.MaxUploadBytes))
		return
	}
	if err := s.usable(r, sb); err != nil {
		s.writeError(w, r, err)
		return
	}
	body := &limitedBody{r: http.MaxBytesReader(w, r.Body, s.cfg.MaxUploadBytes)}
	err = s.be.WriteFile(r.Context(), sb.ID, p, mode, body)
	if body.overflow {
		// Whatever the runtime made of the cut stream, the answer is 413.
		err = tooLarge(s.cfg.MaxUploadBytes)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
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
	sb, err := s.sandboxFor(r, cerberus.ActionRead)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	p, err := sandboxPath(r.URL.Query().Get("path"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.usable(r, sb); err != nil {
		s.writeError(w, r, err)
		return
	}
	if list, _ := strconv.ParseBool(r.URL.Query().Get("list")); list {
		if s.listDepth(w, r, sb, p) {
			return
		}
		files, err := s.be.ListFiles(r.Context(), sb.ID, p)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if files == nil {
			files = []tartarus.FileInfo{}
		}
		writeJSON(w, http.StatusOK, api.FileList{Path: p, Files: files})
		return
	}
	rc, err := s.be.ReadFile(r.Context(), sb.ID, p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, rc); err != nil {
		// Headers are gone; cutting the connection tells the client the
		// body is incomplete.
		s.log.Warn("file download cut", "request_id", requestID(r.Context()), "sandbox", sb.ID, "err", err)
		panic(http.ErrAbortHandler)
	}
}
