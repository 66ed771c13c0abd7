package templates

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// Limits of a build context.
const (
	MaxContextBytes = api.MaxTemplateContextBytes
	MaxContextFiles = 100_000
)

// DockerfileInContext is where the CLI puts a Dockerfile that is not in
// the build context; it is never copied into the template.
const DockerfileInContext = ".tartarus-dockerfile"

// ignoreRule is one line of a .dockerignore.
type ignoreRule struct {
	pattern string
	negate  bool
}

// Ignore is a parsed .dockerignore: the last rule that matches a path
// decides, and a rule that matches a directory matches everything in it.
type Ignore struct{ rules []ignoreRule }

// ParseIgnore reads a .dockerignore.
func ParseIgnore(r io.Reader) (*Ignore, error) {
	ig := &Ignore{}
	sc := bufio.NewScanner(io.LimitReader(r, 1<<20))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		rule := ignoreRule{}
		if strings.HasPrefix(line, "!") {
			rule.negate = true
			line = strings.TrimSpace(line[1:])
		}
		line = strings.TrimPrefix(path.Clean("/"+line), "/")
		if line == "" {
			continue
		}
		if _, err := path.Match(strings.ReplaceAll(line, "**", "*"), ""); err != nil {
			return nil, tartarus.Errorf(tartarus.ErrInvalid, ".dockerignore: pattern %q: %v", line, err)
		}
		rule.pattern = line
		ig.rules = append(ig.rules, rule)
	}
	return ig, sc.Err()
}

// Excluded reports whether the context path rel (slash-separated, no
// leading slash) is left out of the build.
func (ig *Ignore) Excluded(rel string) bool {
	if rel == DockerfileInContext {
		return true
	}
	if ig == nil {
		return false
	}
	out := false
	for _, r := range ig.rules {
		if matchPath(r.pattern, rel) {
			out = !r.negate
		}
	}
	return out
}

// matchPath matches rel or one of its parent directories against pattern,
// where a "**" segment matches any number of segments.
func matchPath(pattern, rel string) bool {
	ps, rs := strings.Split(pattern, "/"), strings.Split(rel, "/")
	for n := len(rs); n > 0; n-- {
		if matchSegs(ps, rs[:n]) {
			return true
		}
	}
	return false
}

func matchSegs(ps, rs []string) bool {
	if len(ps) == 0 {
		return len(rs) == 0
	}
	if ps[0] == "**" {
		for i := 0; i <= len(rs); i++ {
			if matchSegs(ps[1:], rs[i:]) {
				return true
			}
		}
		return false
	}
	if len(rs) == 0 {
		return false
	}
	ok, _ := path.Match(ps[0], rs[0])
	return ok && matchSegs(ps[1:], rs[1:])
}

// UnpackContext unpacks a tar stream of a build context into the empty
// directory dir. Only regular files and directories are taken; a name that
// is absolute or climbs out with "..", a link, a device, or more than the
// limits allow is refused, so the context cannot touch anything outside dir.
func UnpackContext(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	var total int64
	files := 0
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return tartarus.Errorf(tartarus.ErrInvalid, "build context: %v", err)
		}
		name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		if name == "" || name == "." {
			continue
		}
		if path.IsAbs(h.Name) || strings.Contains("/"+h.Name+"/", "/../") {
			return tartarus.Errorf(tartarus.ErrInvalid, "build context: %q leaves the context", h.Name)
		}
		if files++; files > MaxContextFiles {
			return tartarus.Errorf(tartarus.ErrInvalid, "build context: more than %d entries", MaxContextFiles)
		}
		target := filepath.Join(dir, filepath.FromSlash(name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if total += h.Size; total > MaxContextBytes {
				return tartarus.Errorf(tartarus.ErrInvalid, "build context: larger than %d bytes", MaxContextBytes)
			}
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			// Directories made here hold no links, so no path component
			// can lead elsewhere; O_EXCL refuses a name given twice.
			f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fs.FileMode(h.Mode)&0o755|0o600)
			if err != nil {
				return tartarus.Errorf(tartarus.ErrInvalid, "build context: %s: %v", name, err)
			}
			_, err = io.Copy(f, io.LimitReader(tr, h.Size))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("build context: %s: %w", name, err)
			}
		default:
			return tartarus.Errorf(tartarus.ErrInvalid, "build context: %s: only regular files and directories (type %q)", name, h.Typeflag)
		}
	}
}

// PackContext writes the directory dir as a tar stream of a build context,
// leaving out what ig excludes (the server applies the .dockerignore again;
// this only keeps the upload small). extra, when not empty, is a
// Dockerfile from outside the context, sent as DockerfileInContext.
func PackContext(w io.Writer, dir string, ig *Ignore, extra string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		if ig.Excluded(rel) && rel != ".dockerignore" && rel != "Dockerfile" {
			if d.IsDir() && !ig.hasNegations() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return tw.WriteHeader(&tar.Header{Name: rel + "/", Typeflag: tar.TypeDir, Mode: 0o755})
		case info.Mode().IsRegular():
			return addFile(tw, p, rel, int64(info.Mode().Perm()))
		default:
			return fmt.Errorf("%s: only regular files and directories go in a build context", p)
		}
	})
	if err == nil && extra != "" {
		err = addFile(tw, extra, DockerfileInContext, 0o644)
	}
	if err != nil {
		return err
	}
	return tw.Close()
}

func (ig *Ignore) hasNegations() bool {
	for _, r := range ig.rules {
		if r.negate {
			return true
		}
	}
	return false
}

func addFile(tw *tar.Writer, file, name string, mode int64) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: st.Size()}); err != nil {
		return err
	}
	_, err = io.Copy(tw, f)
	return err
}

// copyFile is one file a COPY or ADD puts into the sandbox.
type copyFile struct {
	src  string // in the unpacked context
	dst  string // in the guest
	mode os.FileMode
}

// resolveCopy lists the files of `COPY srcs... dst` from the context dir
// (after .dockerignore), in a fixed order, and their digest: the cache key
// of the step. Sources may be files, directories (their contents are
// copied) or glob patterns.
func resolveCopy(dir string, ig *Ignore, srcs []string, dst, workdir string) ([]copyFile, string, error) {
	toDir := strings.HasSuffix(dst, "/") || len(srcs) > 1
	if !path.IsAbs(dst) {
		dst = path.Join(workdir, dst)
	}
	dst = path.Clean(dst)
	var out []copyFile
	for _, s := range srcs {
		clean := strings.TrimPrefix(path.Clean("/"+s), "/")
		if strings.Contains("/"+s+"/", "/../") {
			return nil, "", tartarus.Errorf(tartarus.ErrInvalid, "COPY %s: the source leaves the build context", s)
		}
		var matches []string
		if clean == "" {
			matches = []string{"."}
		} else {
			m, err := filepath.Glob(filepath.Join(dir, filepath.FromSlash(clean)))
			if err != nil {
				return nil, "", tartarus.Errorf(tartarus.ErrInvalid, "COPY %s: %v", s, err)
			}
			for _, p := range m {
				rel, _ := filepath.Rel(dir, p)
				matches = append(matches, filepath.ToSlash(rel))
			}
		}
		if len(matches) == 0 {
			return nil, "", tartarus.Errorf(tartarus.ErrInvalid, "COPY %s: no such file in the build context", s)
		}
		if len(matches) > 1 {
			toDir = true
		}
		for _, rel := range matches {
			full := filepath.Join(dir, filepath.FromSlash(rel))
			st, err := os.Lstat(full)
			if err != nil {
				return nil, "", err
			}
			if !st.IsDir() {
				if ig.Excluded(rel) {
					return nil, "", tartarus.Errorf(tartarus.ErrInvalid, "COPY %s: %s is excluded by .dockerignore", s, rel)
				}
				target := dst
				if toDir {
					target = path.Join(dst, path.Base(rel))
				}
				out = append(out, copyFile{src: full, dst: target, mode: st.Mode().Perm()})
				continue
			}
			err = filepath.WalkDir(full, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				r, _ := filepath.Rel(dir, p)
				r = filepath.ToSlash(r)
				if d.IsDir() || ig.Excluded(r) {
					return nil
				}
				info, err := d.Info()
				if err != nil || !info.Mode().IsRegular() {
					return err
				}
				sub, _ := filepath.Rel(full, p)
				out = append(out, copyFile{src: p, dst: path.Join(dst, filepath.ToSlash(sub)), mode: info.Mode().Perm()})
				return nil
			})
			if err != nil {
				return nil, "", err
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].dst < out[j].dst })
	h := sha256.New()
	for _, f := range out {
		sum, err := fileSum(f.src)
		if err != nil {
			return nil, "", err
		}
		fmt.Fprintf(h, "%s %o %s\n", f.dst, f.mode, sum)
	}
	return out, hex.EncodeToString(h.Sum(nil)), nil
}

func fileSum(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
