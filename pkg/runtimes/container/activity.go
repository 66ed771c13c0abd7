package container

import (
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

// Activity tracks, per sandbox, whether a command or transfer is under way
// and when the last one ended, for Instance.IdleSince. Safe for concurrent use.
type Activity struct {
	clock clock.Clock
	mu    sync.Mutex
	busy  map[string]int
	last  map[string]time.Time
}

// NewActivity returns a tracker reading time from clk (clock.System{}
// when nil).
func NewActivity(clk clock.Clock) *Activity {
	if clk == nil {
		clk = clock.System{}
	}
	return &Activity{clock: clk, busy: map[string]int{}, last: map[string]time.Time{}}
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
			a.last[id] = a.clock.Now()
			a.mu.Unlock()
		})
	}
}

// Touch records activity on id now.
func (a *Activity) Touch(id string) {
	a.mu.Lock()
	a.last[id] = a.clock.Now()
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
		t = a.clock.Now()
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
