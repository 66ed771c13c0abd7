package hecatoncheir

import (
	"sync"
)

// keyLock is one sandbox's lock; refs counts holders and waiters so the
// entry goes away when nobody needs it.
type keyLock struct {
	mu   sync.Mutex
	refs int
}

// lock serializes lifecycle changes (create, pause, resume, destroy) of one
// sandbox within this agent; the store's compare-and-set guards the rest.
func (a *Agent) lock(id string) func() {
	a.mu.Lock()
	l, ok := a.locks[id]
	if !ok {
		l = &keyLock{}
		a.locks[id] = l
	}
	l.refs++
	a.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		a.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(a.locks, id)
		}
		a.mu.Unlock()
	}
}

// tryLock takes id's lock if nobody holds it.
func (a *Agent) tryLock(id string) (func(), bool) {
	a.mu.Lock()
	l, ok := a.locks[id]
	if !ok {
		l = &keyLock{}
		a.locks[id] = l
	}
	l.refs++
	a.mu.Unlock()
	release := func() {
		a.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(a.locks, id)
		}
		a.mu.Unlock()
	}
	if !l.mu.TryLock() {
		release()
		return nil, false
	}
	return func() { l.mu.Unlock(); release() }, true
}
