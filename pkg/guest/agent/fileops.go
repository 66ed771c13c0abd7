package agent

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/tartarus-sandbox/tartarus/pkg/guest/proto"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// stat describes path without following a final symbolic link.
func (a *Agent) stat(path string) (any, error) {
	a.activity.touch(a.clock.Now())
	info, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	fi := fileInfo(path, info)
	return &fi, nil
}

// mkdir makes a directory; with parents, its missing parents too. An
// existing directory is not an error: Created says whether it was made.
func (a *Agent) mkdir(path string, parents bool) (any, error) {
	a.activity.touch(a.clock.Now())
	if fi, err := os.Stat(path); err == nil {
		if !fi.IsDir() {
			return nil, tartarus.Errorf(tartarus.ErrAlreadyExists, "mkdir %s: exists and is not a directory", path)
		}
		return &proto.MkdirResult{Created: false}, nil
	}
	var err error
	if parents {
		err = os.MkdirAll(path, 0o755)
	} else {
		err = os.Mkdir(path, 0o755)
	}
	if errors.Is(err, fs.ErrExist) {
		return &proto.MkdirResult{Created: false}, nil
	}
	if err != nil {
		return nil, err
	}
	return &proto.MkdirResult{Created: true}, nil
}

// move renames path to dest, making dest's parent directories.
func (a *Agent) move(path, dest string) (any, error) {
	a.activity.touch(a.clock.Now())
	if _, err := os.Lstat(path); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
		return nil, err
	}
	if err := os.Rename(path, dest); err != nil {
		return nil, err
	}
	return a.stat(dest)
}

// remove removes path; a directory that is not empty only when recursive.
// A missing path is not found, so callers learn it was not there.
func (a *Agent) remove(path string, recursive bool) (any, error) {
	a.activity.touch(a.clock.Now())
	if _, err := os.Lstat(path); err != nil {
		return nil, err
	}
	var err error
	if recursive {
		err = os.RemoveAll(path)
	} else {
		err = os.Remove(path)
		if errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
			return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "remove %s: directory not empty (remove it recursively)", path)
		}
	}
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}
