package e2b

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"strconv"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// filesystem.Filesystem, translated onto the native file routes.

type pathRequest struct {
	Path string `json:"path"`
}

type listDirRequest struct {
	Path  string `json:"path"`
	Depth pbUint `json:"depth"`
}

type moveRequest struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
}

type watchDirRequest struct {
	Path      string `json:"path"`
	Recursive bool   `json:"recursive"`
}

// entryInfo is envd's EntryInfo in protobuf's JSON mapping.
type entryInfo struct {
	Name          string `json:"name"`
	Type          string `json:"type"`
	Path          string `json:"path"`
	Size          string `json:"size"` // int64: a string
	Mode          uint32 `json:"mode"`
	Permissions   string `json:"permissions"`
	Owner         string `json:"owner"`
	Group         string `json:"group"`
	ModifiedTime  string `json:"modifiedTime,omitempty"`
	SymlinkTarget string `json:"symlinkTarget,omitempty"`
}

type entryResponse struct {
	Entry entryInfo `json:"entry"`
}

// entry converts a native FileInfo found in dir (its absolute path when
// the guest gave none).
func entry(fi tartarus.FileInfo, dir string) entryInfo {
	p := fi.Path
	if p == "" {
		p = path.Join(dir, fi.Name)
	}
	typ := "FILE_TYPE_FILE"
	switch {
	case fi.Mode&os.ModeSymlink != 0 || fi.SymlinkTarget != "":
		typ = "FILE_TYPE_SYMLINK"
	case fi.IsDir || fi.Mode.IsDir():
		typ = "FILE_TYPE_DIRECTORY"
	}
	e := entryInfo{Name: path.Base(p), Type: typ, Path: p, Size: strconv.FormatInt(fi.Size, 10),
		Mode: uint32(fi.Mode.Perm()), Permissions: fi.Mode.String(), Owner: "root", Group: "root",
		SymlinkTarget: fi.SymlinkTarget}
	if !fi.ModTime.IsZero() {
		e.ModifiedTime = fi.ModTime.UTC().Format(time.RFC3339Nano)
	}
	return e
}

func (e *envdCall) stat(ctx context.Context, in *pathRequest) (any, error) {
	p := e.abs(in.Path)
	fi, err := e.c.StatFile(ctx, e.id, p)
	if err != nil {
		return nil, err
	}
	return entryResponse{Entry: entry(*fi, path.Dir(p))}, nil
}

func (e *envdCall) makeDir(ctx context.Context, in *pathRequest) (any, error) {
	p := e.abs(in.Path)
	created, err := e.c.MakeDir(ctx, e.id, p, true)
	if err != nil {
		return nil, err
	}
	if !created {
		return nil, &rpcError{Code: "already_exists", Message: fmt.Sprintf("%s already exists", p)}
	}
	fi, err := e.c.StatFile(ctx, e.id, p)
	if err != nil {
		return nil, err
	}
	return entryResponse{Entry: entry(*fi, path.Dir(p))}, nil
}

func (e *envdCall) move(ctx context.Context, in *moveRequest) (any, error) {
	if in.Source == "" || in.Destination == "" {
		return nil, invalidf("source and destination are required")
	}
	to := e.abs(in.Destination)
	fi, err := e.c.MoveFile(ctx, e.id, e.abs(in.Source), to)
	if err != nil {
		return nil, err
	}
	if fi.Path == "" {
		fi.Path = to
	}
	return entryResponse{Entry: entry(*fi, path.Dir(to))}, nil
}

func (e *envdCall) listDir(ctx context.Context, in *listDirRequest) (any, error) {
	p := e.abs(in.Path)
	depth := int(in.Depth)
	if depth == 0 {
		depth = 1
	}
	if depth > 16 {
		return nil, invalidf("depth " + strconv.Itoa(depth) + ": at most 16")
	}
	list, err := e.c.ListFilesDepth(ctx, e.id, p, depth)
	if err != nil {
		return nil, err
	}
	out := struct {
		Entries []entryInfo `json:"entries"`
	}{Entries: []entryInfo{}}
	for _, fi := range list {
		out.Entries = append(out.Entries, entry(fi, p))
	}
	return out, nil
}

func (e *envdCall) remove(ctx context.Context, in *pathRequest) (any, error) {
	if err := e.c.RemoveFile(ctx, e.id, e.abs(in.Path), true); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// watchEventTypes maps native watch lines onto envd's EventType.
var watchEventTypes = map[string]string{
	"create": "EVENT_TYPE_CREATE",
	"write":  "EVENT_TYPE_WRITE",
	"remove": "EVENT_TYPE_REMOVE",
	"rename": "EVENT_TYPE_RENAME",
	"chmod":  "EVENT_TYPE_CHMOD",
}

// errWatchEnded stops a watch whose client left.
var errWatchEnded = errors.New("watch ended")

func (e *envdCall) watchDir(ctx context.Context, in *watchDirRequest, s *stream) error {
	p := e.abs(in.Path)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go e.h.keepaliveWith(ctx, cancel, s, map[string]any{"keepalive": struct{}{}})
	err := e.c.Watch(ctx, e.id, p, in.Recursive, func(l api.WatchLine) error {
		var msg any
		switch l.Type {
		case api.WatchWatching:
			msg = map[string]any{"start": struct{}{}}
		default:
			t, ok := watchEventTypes[l.Type]
			if !ok {
				return nil // overflow and newer kinds have no envd name
			}
			msg = map[string]any{"filesystem": map[string]string{"name": l.Name, "type": t}}
		}
		if s.send(msg) != nil {
			return errWatchEnded
		}
		return nil
	})
	var ce *client.Error
	switch {
	case errors.Is(err, errWatchEnded):
		return nil
	case errors.As(err, &ce):
		return err
	case ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		return nil // the SDK's own timeout: an ordinary end
	}
	return err
}
