package jail

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// uidAllocator hands out one uid (used as the gid too) per sandbox from
// [base, base+count). Each allocation is a file <dir>/<uid> holding the
// sandbox id, created with O_EXCL, so allocations survive a restart and two
// processes sharing the directory never hand out the same uid.
type uidAllocator struct {
	dir         string
	base, count int

	mu    sync.Mutex
	byID  map[string]int
	taken map[int]string
	next  int // where the next search starts, so a freed uid is not reused at once
}

func newUIDAllocator(dir string, base, count int) (*uidAllocator, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("uid allocations: %w", err)
	}
	a := &uidAllocator{dir: dir, base: base, count: count, byID: map[string]int{}, taken: map[int]string{}}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("uid allocations: %w", err)
	}
	for _, e := range ents {
		uid, err := strconv.Atoi(e.Name())
		if err != nil || uid < base || uid >= base+count {
			continue // not ours (another range, or a temp file)
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("uid allocations: %w", err)
		}
		id := strings.TrimSpace(string(b))
		if id == "" {
			_ = os.Remove(filepath.Join(dir, e.Name())) // a crash between create and write
			continue
		}
		a.byID[id] = uid
		a.taken[uid] = id
	}
	return a, nil
}

// allocate returns the sandbox's uid, allocating one if it has none.
func (a *uidAllocator) allocate(id string) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if uid, ok := a.byID[id]; ok {
		return uid, nil
	}
	for i := 0; i < a.count; i++ {
		uid := a.base + (a.next+i)%a.count
		if _, busy := a.taken[uid]; busy {
			continue
		}
		f, err := os.OpenFile(filepath.Join(a.dir, strconv.Itoa(uid)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) {
			continue // another process sharing the directory took it
		}
		if err != nil {
			return 0, fmt.Errorf("allocate uid for %s: %w", id, err)
		}
		_, werr := f.WriteString(id + "\n")
		cerr := f.Close()
		if err := errors.Join(werr, cerr); err != nil {
			_ = os.Remove(f.Name())
			return 0, fmt.Errorf("allocate uid for %s: %w", id, err)
		}
		a.byID[id] = uid
		a.taken[uid] = id
		a.next = (uid - a.base + 1) % a.count
		return uid, nil
	}
	return 0, tartarus.Errorf(tartarus.ErrResourceExhausted, "allocate uid for %s: all %d uids from %d are in use", id, a.count, a.base)
}

// release frees the sandbox's uid; releasing an unknown id is a no-op.
func (a *uidAllocator) release(id string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	uid, ok := a.byID[id]
	if !ok {
		return nil
	}
	if err := os.Remove(filepath.Join(a.dir, strconv.Itoa(uid))); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("release uid %d of %s: %w", uid, id, err)
	}
	delete(a.byID, id)
	delete(a.taken, uid)
	return nil
}

// ids returns every sandbox that holds a uid.
func (a *uidAllocator) ids() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]string, 0, len(a.byID))
	for id := range a.byID {
		out = append(out, id)
	}
	return out
}
