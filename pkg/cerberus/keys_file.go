package cerberus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// fileKeys keeps keys in memory and in one JSON file (mode 0600), rewritten
// atomically (temp file, fsync, rename) on every change. Only the process
// that opened it sees its changes: it is the backend of a single server.
type fileKeys struct {
	path string

	mu   sync.RWMutex
	keys map[string]*storedKey
}

var _ keyBackend = (*fileKeys)(nil)

// keyFile is the file's layout.
type keyFile struct {
	Version int         `json:"version"`
	Keys    []storedKey `json:"keys"`
}

func openFileKeys(path string) (*fileKeys, error) {
	f := &fileKeys{path: path, keys: map[string]*storedKey{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open key store: %w", err)
	}
	var kf keyFile
	if err := json.Unmarshal(b, &kf); err != nil {
		return nil, fmt.Errorf("open key store %s: %w", path, err)
	}
	for i := range kf.Keys {
		k := kf.Keys[i]
		f.keys[k.ID] = &k
	}
	return f, nil
}

func (f *fileKeys) insert(ctx context.Context, k storedKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.insertLocked(k)
}

func (f *fileKeys) insertFirst(ctx context.Context, k storedKey) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.keys) > 0 {
		return false, nil
	}
	if err := f.insertLocked(k); err != nil {
		return false, err
	}
	return true, nil
}

func (f *fileKeys) insertLocked(k storedKey) error {
	if _, dup := f.keys[k.ID]; dup {
		return tartarus.Errorf(tartarus.ErrAlreadyExists, "api key %s", k.ID)
	}
	f.keys[k.ID] = &k
	if err := f.saveLocked(); err != nil {
		delete(f.keys, k.ID)
		return err
	}
	return nil
}

func (f *fileKeys) get(ctx context.Context, id string) (storedKey, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	k, ok := f.keys[id]
	if !ok {
		return storedKey{}, tartarus.Errorf(tartarus.ErrNotFound, "api key %s", id)
	}
	return *k, nil
}

func (f *fileKeys) list(ctx context.Context, tenant string) ([]storedKey, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []storedKey
	for _, k := range f.keys {
		if tenant == "" || tenant == "*" || k.TenantID == tenant {
			out = append(out, *k)
		}
	}
	return out, nil
}

func (f *fileKeys) revoke(ctx context.Context, id string, at time.Time) (storedKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, ok := f.keys[id]
	if !ok {
		return storedKey{}, tartarus.Errorf(tartarus.ErrNotFound, "api key %s", id)
	}
	if k.Revoked {
		return *k, nil
	}
	k.Revoked, k.RevokedAt = true, at
	if err := f.saveLocked(); err != nil {
		k.Revoked, k.RevokedAt = false, time.Time{}
		return storedKey{}, err
	}
	return *k, nil
}

func (f *fileKeys) close() error { return nil }

func (f *fileKeys) saveLocked() error {
	kf := keyFile{Version: 1}
	for _, k := range f.keys {
		kf.Keys = append(kf.Keys, *k)
	}
	slices.SortFunc(kf.Keys, func(a, b storedKey) int { return strings.Compare(a.ID, b.ID) })
	b, err := json.MarshalIndent(kf, "", "  ")
	if err != nil {
		return fmt.Errorf("save key store: %w", err)
	}
	if err := writeFileAtomic(f.path, b, 0o600); err != nil {
		return fmt.Errorf("save key store: %w", err)
	}
	return nil
}

// writeFileAtomic replaces path with data so that a crash leaves either the
// old or the new file, never a torn one.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
