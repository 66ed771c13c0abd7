package templates

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// StartFromContext starts a build of p for tenant from body, the tar
// stream of its build context: the context is unpacked (UnpackContext)
// into a directory of tmpDir ("" for the system's), the Dockerfile and
// .dockerignore read from it, and the build started; the directory goes
// when the build ends. Bad input is refused before anything runs.
func (bd *Builder) StartFromContext(tenant string, p *api.TemplateBuildRequest, body io.Reader, tmpDir string) (api.TemplateBuild, error) {
	req := &Request{Name: p.Name, Tenant: tenant, Args: p.Args, MemoryMB: p.MemoryMB, CPUs: p.CPUs, Network: p.Network,
		Timeout: time.Duration(p.TimeoutS) * time.Second, ReadyTimeout: time.Duration(p.ReadyTimeoutS) * time.Second}
	// Everything but the Dockerfile can be checked before the upload.
	if err := errors.Join(req.paramProblems()...); err != nil {
		return api.TemplateBuild{}, tartarus.Errorf(tartarus.ErrInvalid, "build: %v", err)
	}
	dfName := p.Dockerfile
	if dfName == "" {
		dfName = "Dockerfile"
	}
	if path.IsAbs(dfName) || strings.Contains("/"+dfName+"/", "/../") {
		return api.TemplateBuild{}, tartarus.Errorf(tartarus.ErrInvalid, "dockerfile %q: a path inside the build context", dfName)
	}
	dir, err := os.MkdirTemp(tmpDir, "tartarus-build-")
	if err != nil {
		return api.TemplateBuild{}, err
	}
	started := false
	defer func() {
		if !started {
			os.RemoveAll(dir)
		}
	}()
	if err := UnpackContext(body, dir); err != nil {
		return api.TemplateBuild{}, err
	}
	f, err := os.Open(filepath.Join(dir, filepath.FromSlash(dfName)))
	if err != nil {
		return api.TemplateBuild{}, tartarus.Errorf(tartarus.ErrInvalid, "dockerfile %s: not in the build context", dfName)
	}
	req.Dockerfile, err = ParseDockerfile(f)
	f.Close()
	if err != nil {
		return api.TemplateBuild{}, err
	}
	if ig, err := os.Open(filepath.Join(dir, ".dockerignore")); err == nil {
		req.Ignore, err = ParseIgnore(ig)
		ig.Close()
		if err != nil {
			return api.TemplateBuild{}, err
		}
	}
	req.Context = dir
	b, err := bd.Start(req, func() { os.RemoveAll(dir) })
	if err != nil {
		return api.TemplateBuild{}, err
	}
	started = true
	return b.Status(), nil
}

// ContextFrom returns what the FROM of Dockerfile dfName ("" for
// Dockerfile) in the build context tar stream r names, ARGs unexpanded;
// "" when the stream has no such Dockerfile or it does not parse (the
// build itself says why). A cluster replica reads it to run the build
// where FROM's template is.
func ContextFrom(r io.Reader, dfName string) string {
	if dfName == "" {
		dfName = "Dockerfile"
	}
	want := path.Clean("/" + dfName)
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err != nil {
			return ""
		}
		if h.Typeflag != tar.TypeReg || path.Clean("/"+h.Name) != want {
			continue
		}
		d, err := ParseDockerfile(io.LimitReader(tr, MaxDockerfileBytes))
		if err != nil {
			return ""
		}
		return d.From()
	}
}
