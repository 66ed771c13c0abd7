package container

import (
	"sync"
	"time"
)

// Activity tracks, per sandbox, whether a command or transfer is under way
// and when the last one ended, for Instance.IdleSince. Safe for concurrent use.
type Activity struct {
	now  func() time.Time
	mu   sync.Mutex
	busy map[string]int
	last map[string]time.Time
}

// NewActivity returns a tracker reading time from now (time.Now when nil).
func NewActivity(now func() time.Time) *Activity {
	if now == nil {
		now = time.Now
	}
	return &Activity{now: now, busy: map[string]int{}, last: map[string]time.Time{}}
}

// Begin marks id busy; call the returned function when the work ends.
func (a *Activity) Begin(id string) (end func()) {
	a.mu.Lock()
	a.busy[id]++
	a.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			a.busy[id]--
			if a.busy[id] <= 0 {
				delete(a.busy, id)
			}
			a.last[id] = a.now()
			a.mu.Unlock()
		})
	}
}

// Touch records activity on id now.
func (a *Activity) Touch(id string) {
	a.mu.Lock()
	a.last[id] = a.now()
	a.mu.Unlock()
}

// IdleSince returns when id last became idle, or nil while it is busy.
// A sandbox never seen is idle since now.
func (a *Activity) IdleSince(id string) *time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.busy[id] > 0 {
		return nil
	}
	t, ok := a.last[id]
	if !ok {
		t = a.now()
		a.last[id] = t
	}
	return &t
}

// Forget drops id.
func (a *Activity) Forget(id string) {
	a.mu.Lock()
	delete(a.busy, id)
	delete(a.last, id)
	a.mu.Unlock()
}
