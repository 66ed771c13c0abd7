package hypnos

import (
	"container/heap"
	"context"
	"sync"
)

// wakeQueue is a counting semaphore whose waiters are served by priority
// (higher first), then in arrival order.
type wakeQueue struct {
	mu      sync.Mutex
	free    int
	seq     uint64
	waiters waiterHeap
}

type waiter struct {
	prio  int
	seq   uint64
	ready chan struct{} // closed when the slot is handed over
	index int
}

func newWakeQueue(slots int) *wakeQueue { return &wakeQueue{free: slots} }

// acquire blocks until a slot is free for prio, or ctx ends.
func (q *wakeQueue) acquire(ctx context.Context, prio int) error {
	q.mu.Lock()
	if q.free > 0 && len(q.waiters) == 0 {
		q.free--
		q.mu.Unlock()
		return nil
	}
	q.seq++
	w := &waiter{prio: prio, seq: q.seq, ready: make(chan struct{})}
	heap.Push(&q.waiters, w)
	q.mu.Unlock()

	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		q.mu.Lock()
		defer q.mu.Unlock()
		select {
		case <-w.ready:
			// Handed a slot just as ctx ended: pass it on.
			q.releaseLocked()
		default:
			heap.Remove(&q.waiters, w.index)
		}
		return ctx.Err()
	}
}

func (q *wakeQueue) release() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.releaseLocked()
}

func (q *wakeQueue) releaseLocked() {
	if len(q.waiters) > 0 {
		w := heap.Pop(&q.waiters).(*waiter)
		close(w.ready)
		return
	}
	q.free++
}

// waiting reports how many callers wait for a slot.
func (q *wakeQueue) waiting() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.waiters)
}

type waiterHeap []*waiter

func (h waiterHeap) Len() int { return len(h) }
func (h waiterHeap) Less(i, j int) bool {
	if h[i].prio != h[j].prio {
		return h[i].prio > h[j].prio
	}
	return h[i].seq < h[j].seq
}
func (h waiterHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *waiterHeap) Push(x any) {
	w := x.(*waiter)
	w.index = len(*h)
	*h = append(*h, w)
}
func (h *waiterHeap) Pop() any {
	old := *h
	w := old[len(old)-1]
	*h = old[:len(old)-1]
	return w
}
