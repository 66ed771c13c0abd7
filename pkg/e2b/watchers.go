package e2b

import (
	"context"
	"crypto/rand"
	"errors"
	"strconv"
	"sync"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// The non-streaming watch calls (CreateWatcher, GetWatcherEvents,
// RemoveWatcher; E2B's Python SDK polls with them): the handler holds a
// native watch stream per watcher and queues its events until polled.

const (
	maxWatchersPerSandbox = 64
	maxWatchers           = 1024 // in all, bounding what unpolled watchers hold
	maxQueuedEvents       = 4096
)

type watcherTable struct {
	mu   sync.Mutex
	byID map[string]*watcher
}

type watcher struct {
	id, sandbox, token string
	cancel             context.CancelFunc

	mu     sync.Mutex
	events []fsEvent
	err    error // the native watch ended with it
}

type fsEvent struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

func (t *watcherTable) count(sandbox string) int {
	n := 0
	for _, w := range t.byID {
		if w.sandbox == sandbox {
			n++
		}
	}
	return n
}

func (e *envdCall) createWatcher(ctx context.Context, token string, in *watchDirRequest) (any, error) {
	t := &e.h.watchers
	t.mu.Lock()
	if t.count(e.id) >= maxWatchersPerSandbox || len(t.byID) >= maxWatchers {
		t.mu.Unlock()
		return nil, &rpcError{Code: "resource_exhausted", Message: "at most " + strconv.Itoa(maxWatchersPerSandbox) + " watchers per sandbox and " + strconv.Itoa(maxWatchers) + " in all"}
	}
	t.mu.Unlock()
	life, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w := &watcher{id: rand.Text(), sandbox: e.id, token: token, cancel: cancel}
	ready := make(chan error, 1)
	go func() {
		err := e.c.Watch(life, e.id, e.abs(in.Path), in.Recursive, func(l api.WatchLine) error {
			if l.Type == api.WatchWatching {
				ready <- nil
				return nil
			}
			typ, ok := watchEventTypes[l.Type]
			if !ok {
				return nil
			}
			w.mu.Lock()
			if len(w.events) < maxQueuedEvents {
				w.events = append(w.events, fsEvent{Name: l.Name, Type: typ})
			}
			w.mu.Unlock()
			return nil
		})
		if err == nil {
			err = errors.New("the watch stream ended")
		}
		w.mu.Lock()
		w.err = err
		empty := len(w.events) == 0
		w.mu.Unlock()
		if empty {
			// Nothing left to hand out (the sandbox is gone, say): forget
			// it now rather than wait for a poll that may never come.
			t.mu.Lock()
			delete(t.byID, w.id)
			t.mu.Unlock()
		}
		select {
		case ready <- err:
		default:
		}
	}()
	select {
	case err := <-ready:
		if err != nil {
			cancel()
			return nil, err
		}
	case <-ctx.Done():
		cancel()
		return nil, ctx.Err()
	}
	t.mu.Lock()
	t.byID[w.id] = w
	t.mu.Unlock()
	return map[string]string{"watcherId": w.id}, nil
}

type watcherRequest struct {
	WatcherID string `json:"watcherId"`
}

// find returns the call's sandbox's watcher id; another token than the
// one that made it must be able to see the sandbox.
func (t *watcherTable) find(ctx context.Context, e *envdCall, token, id string) (*watcher, error) {
	t.mu.Lock()
	w := t.byID[id]
	t.mu.Unlock()
	if w == nil || w.sandbox != e.id {
		return nil, &rpcError{Code: "not_found", Message: "watcher " + strconv.Quote(id) + " not found"}
	}
	if token != w.token {
		if _, err := e.c.GetSandbox(ctx, e.id); err != nil {
			return nil, err
		}
	}
	return w, nil
}

func (t *watcherTable) remove(w *watcher) {
	w.cancel()
	t.mu.Lock()
	delete(t.byID, w.id)
	t.mu.Unlock()
}

func (t *watcherTable) closeSandbox(id string) {
	t.mu.Lock()
	var ws []*watcher
	for _, w := range t.byID {
		if w.sandbox == id {
			ws = append(ws, w)
		}
	}
	t.mu.Unlock()
	for _, w := range ws {
		t.remove(w)
	}
}

func (e *envdCall) getWatcherEvents(ctx context.Context, token string, in *watcherRequest) (any, error) {
	w, err := e.h.watchers.find(ctx, e, token, in.WatcherID)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	events, werr := w.events, w.err
	w.events = nil
	w.mu.Unlock()
	if werr != nil && len(events) == 0 {
		e.h.watchers.remove(w)
		return nil, &rpcError{Code: "failed_precondition", Message: "the watch ended: " + werr.Error()}
	}
	if events == nil {
		events = []fsEvent{}
	}
	return map[string][]fsEvent{"events": events}, nil
}

func (e *envdCall) removeWatcher(ctx context.Context, token string, in *watcherRequest) (any, error) {
	w, err := e.h.watchers.find(ctx, e, token, in.WatcherID)
	if err != nil {
		return nil, err
	}
	e.h.watchers.remove(w)
	return struct{}{}, nil
}
