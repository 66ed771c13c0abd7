package hypnos

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// fakeRuntime is a Runtime and Snapshotter whose sandboxes are a few bytes
// of state: files (the "disk") and a counter (a "process" in memory that
// Exec advances). Snapshot writes them as real files, memory.img padded with
// zero pages like a guest's memory and disk.img; Restore reads them back.
// It stands in for QEMU in unit tests of the layers above it, nothing more.
type fakeRuntime struct {
	mu    sync.Mutex
	boxes map[string]*fakeBox

	failSnapshot, failDestroy, failResume, failRestore error
	destroyCalls                                       int
	restores                                           []string // ids, in order
	restoreGate                                        chan struct{}
	restoring, maxRestoring                            int
}

type fakeBox struct {
	Template string            `json:"template"`
	MemoryMB int               `json:"memory_mb"`
	Files    map[string]string `json:"files"`
	Counter  int               `json:"counter"`
	// IdleSince is the guest's own idea of its last activity; it travels
	// in the memory image, so a woken sandbox reports a time before sleep.
	IdleSince *time.Time `json:"idle_since"`
	state     tartarus.InstanceState
}

var (
	_ tartarus.Runtime     = (*fakeRuntime)(nil)
	_ tartarus.Snapshotter = (*fakeRuntime)(nil)
)

func newFakeRuntime() *fakeRuntime { return &fakeRuntime{boxes: map[string]*fakeBox{}} }

func (f *fakeRuntime) add(id string, idleSince time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := idleSince
	f.boxes[id] = &fakeBox{Template: "base", MemoryMB: 256, Files: map[string]string{}, state: tartarus.InstanceRunning, IdleSince: &t}
}

func (f *fakeRuntime) box(id string) *fakeBox {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.boxes[id]
}

func (f *fakeRuntime) setIdle(id string, t *time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.boxes[id].IdleSince = t
}

func (f *fakeRuntime) Name() string { return "fake" }

func (f *fakeRuntime) Fingerprint(ctx context.Context) (*tartarus.Fingerprint, error) {
	return &tartarus.Fingerprint{Runtime: "fake", Available: true, Capabilities: tartarus.Capabilities{Pause: true, Snapshot: true}}, nil
}

func (f *fakeRuntime) Create(ctx context.Context, cfg *tartarus.VMConfig) (string, error) {
	return "", tartarus.ErrNotImplemented
}
func (f *fakeRuntime) Start(ctx context.Context, id string) error { return tartarus.ErrNotImplemented }

// Exec advances the in-memory counter: the "background process" works.
func (f *fakeRuntime) Exec(ctx context.Context, id string, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.boxes[id]
	if !ok || b.state != tartarus.InstanceRunning {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s not running", id)
	}
	b.Counter++
	return &tartarus.ExecResult{}, nil
}

func (f *fakeRuntime) Signal(ctx context.Context, id string, sig syscall.Signal) error { return nil }

func (f *fakeRuntime) Pause(ctx context.Context, id string) error {
	return f.setState(id, tartarus.InstancePaused, nil)
}

func (f *fakeRuntime) Resume(ctx context.Context, id string) error {
	f.mu.Lock()
	err := f.failResume
	f.mu.Unlock()
	return f.setState(id, tartarus.InstanceRunning, err)
}

func (f *fakeRuntime) setState(id string, s tartarus.InstanceState, fail error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fail != nil {
		return fail
	}
	b, ok := f.boxes[id]
	if !ok {
		return tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	}
	b.state = s
	return nil
}

func (f *fakeRuntime) Destroy(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.destroyCalls++
	if f.failDestroy != nil {
		return f.failDestroy
	}
	delete(f.boxes, id)
	return nil
}

func (f *fakeRuntime) List(ctx context.Context) ([]*tartarus.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*tartarus.Instance
	for id, b := range f.boxes {
		out = append(out, &tartarus.Instance{ID: id, Template: b.Template, State: b.state, MemoryMB: b.MemoryMB, CPUs: 1, IdleSince: b.IdleSince})
	}
	return out, nil
}

func (f *fakeRuntime) Recover(ctx context.Context) ([]*tartarus.Instance, error) { return f.List(ctx) }

func (f *fakeRuntime) ReadFile(ctx context.Context, id, path string) (io.ReadCloser, error) {
	return nil, tartarus.ErrNotImplemented
}

// WriteFile stores a file on the sandbox's "disk".
func (f *fakeRuntime) WriteFile(ctx context.Context, id, path string, mode os.FileMode, r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.boxes[id]
	if !ok {
		return tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	}
	b.Files[path] = string(data)
	return nil
}

func (f *fakeRuntime) ListFiles(ctx context.Context, id, path string) ([]tartarus.FileInfo, error) {
	return nil, tartarus.ErrNotImplemented
}

func (f *fakeRuntime) Stats(ctx context.Context, id string) (*tartarus.Stats, error) {
	return nil, tartarus.ErrNotImplemented
}

func (f *fakeRuntime) Snapshot(ctx context.Context, id, dir string) (*tartarus.SnapshotInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failSnapshot != nil {
		return nil, f.failSnapshot
	}
	b, ok := f.boxes[id]
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	}
	b.state = tartarus.InstancePaused
	mem, _ := json.Marshal(struct {
		Counter   int        `json:"counter"`
		MemoryMB  int        `json:"memory_mb"`
		IdleSince *time.Time `json:"idle_since"`
	}{b.Counter, b.MemoryMB, b.IdleSince})
	memImg := make([]byte, 1<<20) // mostly zero pages, like guest memory
	copy(memImg, mem)
	disk, _ := json.Marshal(b.Files)
	if err := os.WriteFile(filepath.Join(dir, "memory.img"), memImg, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "disk.img"), disk, 0o600); err != nil {
		return nil, err
	}
	return &tartarus.SnapshotInfo{Template: b.Template, MemoryBytes: int64(b.MemoryMB) << 20, CPUs: 1,
		Files: []string{"disk.img", "memory.img"}}, nil
}

func (f *fakeRuntime) Restore(ctx context.Context, cfg *tartarus.VMConfig, dir string) error {
	f.mu.Lock()
	f.restores = append(f.restores, cfg.ID)
	f.restoring++
	f.maxRestoring = max(f.maxRestoring, f.restoring)
	gate, fail := f.restoreGate, f.failRestore
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.restoring--
		f.mu.Unlock()
	}()
	if gate != nil {
		<-gate
	}
	if fail != nil {
		return fail
	}
	memImg, err := os.ReadFile(filepath.Join(dir, "memory.img"))
	if err != nil {
		return err
	}
	disk, err := os.ReadFile(filepath.Join(dir, "disk.img"))
	if err != nil {
		return err
	}
	b := &fakeBox{Template: cfg.Template, state: tartarus.InstanceRunning}
	end := 0
	for end < len(memImg) && memImg[end] != 0 {
		end++
	}
	if err := json.Unmarshal(memImg[:end], b); err != nil {
		return fmt.Errorf("memory image: %w", err)
	}
	if err := json.Unmarshal(disk, &b.Files); err != nil {
		return fmt.Errorf("disk image: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.boxes[cfg.ID]; ok {
		return tartarus.Errorf(tartarus.ErrAlreadyExists, "sandbox %s", cfg.ID)
	}
	f.boxes[cfg.ID] = b
	return nil
}
