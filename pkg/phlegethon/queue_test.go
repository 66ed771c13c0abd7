package phlegethon

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// room is an admit function over a node with free slots; a create of heat
// h takes need[h] slots (1 when unset).
type room struct {
	mu       sync.Mutex
	free     int
	need     map[HeatLevel]int
	admitted []string
	fail     map[string]error
}

func (r *room) admit(_ context.Context, e *Entry) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.fail[e.ID]; err != nil {
		return err
	}
	n := max(r.need[e.Heat], 1)
	if r.free < n {
		return tartarus.Errorf(tartarus.ErrResourceExhausted, "no node with %d slots free: node-a has %d", n, r.free)
	}
	r.free -= n
	r.admitted = append(r.admitted, e.ID)
	return nil
}

func (r *room) setFree(n int) {
	r.mu.Lock()
	r.free = n
	r.mu.Unlock()
}

func (r *room) order() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.admitted, " ")
}

func newQueue(t *testing.T, cfg QueueConfig, j Journal, r *room) (*Queue, *clock.Fake) {
	t.Helper()
	clk := clock.NewFake(t0)
	q, err := NewQueue(cfg, clk, j, r.admit)
	if err != nil {
		t.Fatal(err)
	}
	return q, clk
}

func enqueue(t *testing.T, q *Queue, id string, h HeatLevel, wait time.Duration) Position {
	t.Helper()
	p, err := q.Enqueue(context.Background(), Entry{ID: id, Heat: h, Payload: []byte(`{"template":"base"}`)}, wait)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestQueueServedWhenCapacityFrees(t *testing.T) {
	ctx := context.Background()
	r := &room{}
	j := &MemJournal{}
	q, clk := newQueue(t, QueueConfig{}, j, r)
	if p := enqueue(t, q, "sb-1", HeatCold, 0); p != (Position{Status: StatusQueued, Heat: HeatCold, InHeat: 1, Overall: 1, Depth: 1}) {
		t.Errorf("position %+v", p)
	}
	if n := q.Dispatch(ctx); n != 0 {
		t.Fatalf("admitted %d with no room", n)
	}
	clk.Advance(3 * time.Second)
	r.setFree(1)
	q.CapacityFreed()
	if n := q.Dispatch(ctx); n != 1 {
		t.Fatalf("admitted %d after room freed", n)
	}
	o, err := q.Wait(ctx, "sb-1")
	if err != nil || o.Status != StatusAdmitted || o.Wait != 3*time.Second {
		t.Errorf("outcome %+v, %v", o, err)
	}
	if rec, _ := j.Get(ctx, "sb-1"); rec.Status != StatusAdmitted || string(rec.Payload) != `{"template":"base"}` {
		t.Errorf("journal %+v", rec)
	}
	if p, _ := q.Position(ctx, "sb-1"); p.Status != StatusAdmitted {
		t.Errorf("position after %+v", p)
	}
	if s := q.Stats()[HeatCold]; s.Admitted != 1 || s.AvgWait != 3*time.Second || s.P99Wait != 3*time.Second || s.Depth != 0 {
		t.Errorf("stats %+v", s)
	}
}

func TestQueueTimesOutCleanly(t *testing.T) {
	ctx := context.Background()
	r := &room{}
	j := &MemJournal{}
	q, clk := newQueue(t, QueueConfig{DefaultTimeout: 30 * time.Second}, j, r)
	enqueue(t, q, "sb-1", HeatHot, 10*time.Second)
	enqueue(t, q, "sb-2", HeatHot, 0) // the default, 30 s
	q.Dispatch(ctx)
	clk.Advance(10 * time.Second)
	q.Dispatch(ctx)
	o, err := q.Wait(ctx, "sb-1")
	if err != nil || o.Status != StatusTimedOut ||
		o.Reason != "waited 10s in the hot queue and no node had room: no node with 1 slots free: node-a has 0: resource exhausted" {
		t.Errorf("outcome %+v, %v", o, err)
	}
	if rec, _ := j.Get(ctx, "sb-1"); rec.Status != StatusTimedOut || rec.Reason != o.Reason || !rec.FinishedAt.Equal(t0.Add(10*time.Second)) {
		t.Errorf("journal %+v", rec)
	}
	if p, _ := q.Position(ctx, "sb-2"); p.Status != StatusQueued || p.InHeat != 1 {
		t.Errorf("sb-2 %+v", p)
	}
	clk.Advance(20 * time.Second)
	q.Dispatch(ctx)
	if o, _ := q.Wait(ctx, "sb-2"); o.Status != StatusTimedOut {
		t.Errorf("sb-2 %+v", o)
	}
	if r.order() != "" || q.Stats()[HeatHot].TimedOut != 2 {
		t.Errorf("admitted %q, stats %+v", r.order(), q.Stats()[HeatHot])
	}
}

// Run serves the queue by itself: on the capacity signal, and on its ticker
// for deadlines.
func TestQueueRun(t *testing.T) {
	r := &room{}
	q, clk := newQueue(t, QueueConfig{Tick: time.Second}, &MemJournal{}, r)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- q.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	for clk.Tickers() == 0 {
		time.Sleep(time.Millisecond)
	}
	enqueue(t, q, "served", HeatWarm, time.Minute)
	enqueue(t, q, "late", HeatWarm, 2*time.Second)
	r.setFree(1)
	q.CapacityFreed()
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if o, err := q.Wait(wctx, "served"); err != nil || o.Status != StatusAdmitted {
		t.Fatalf("served: %+v, %v", o, err)
	}
	clk.Advance(2 * time.Second)
	if o, err := q.Wait(wctx, "late"); err != nil || o.Status != StatusTimedOut {
		t.Fatalf("late: %+v, %v", o, err)
	}
}

func TestQueueFailsOnOtherErrors(t *testing.T) {
	ctx := context.Background()
	r := &room{free: 5, fail: map[string]error{"bad": tartarus.Errorf(tartarus.ErrInvalid, "template gone")}}
	q, _ := newQueue(t, QueueConfig{}, &MemJournal{}, r)
	enqueue(t, q, "bad", HeatCold, 0)
	enqueue(t, q, "good", HeatCold, 0)
	if n := q.Dispatch(ctx); n != 1 {
		t.Errorf("admitted %d", n)
	}
	if o, _ := q.Wait(ctx, "bad"); o.Status != StatusFailed || !strings.Contains(o.Reason, "template gone") {
		t.Errorf("bad %+v", o)
	}
}

// Cooler creates pass a hotter head that does not fit, up to MaxBypass
// times; then the queue holds room for the head.
func TestQueueBypass(t *testing.T) {
	ctx := context.Background()
	r := &room{free: 3, need: map[HeatLevel]int{HeatInferno: 4}}
	q, _ := newQueue(t, QueueConfig{MaxBypass: 2}, &MemJournal{}, r)
	enqueue(t, q, "inf", HeatInferno, 0)
	q.Dispatch(ctx) // inferno alone, does not fit
	for _, id := range []string{"c1", "c2", "c3", "c4"} {
		enqueue(t, q, id, HeatCold, 0)
	}
	// c1 ties the inferno's start tag and wins the tie (cooler); c2 and c3
	// come after the inferno in the order and pass it; c4 is held.
	q.Dispatch(ctx)
	if got := r.order(); got != "c1 c2 c3" {
		t.Fatalf("admitted %q, want c1, then c2 and c3 past the inferno, then held", got)
	}
	if p, _ := q.Position(ctx, "c4"); p.Overall != 2 {
		t.Errorf("c4 %+v", p)
	}
	r.setFree(4)
	q.Dispatch(ctx)
	if got := r.order(); got != "c1 c2 c3 inf" {
		t.Errorf("admitted %q", got)
	}
	// FIFO never bypasses.
	r2 := &room{free: 3, need: map[HeatLevel]int{HeatInferno: 4}}
	f, _ := newQueue(t, QueueConfig{Policy: PolicyFIFO}, &MemJournal{}, r2)
	enqueue(t, f, "inf", HeatInferno, 0)
	enqueue(t, f, "c1", HeatCold, 0)
	f.Dispatch(ctx)
	if got := r2.order(); got != "" {
		t.Errorf("fifo admitted %q", got)
	}
}

func TestQueuePositionsAndFairOrder(t *testing.T) {
	ctx := context.Background()
	r := &room{}
	q, _ := newQueue(t, QueueConfig{}, &MemJournal{}, r)
	for _, id := range []string{"i1", "i2", "i3"} {
		enqueue(t, q, id, HeatInferno, 0)
	}
	p := enqueue(t, q, "c1", HeatCold, 0)
	// c1 ties i1 on start tag and wins the tie (cooler); then i1, c2 ...
	if p.InHeat != 1 || p.Overall != 1 || p.Depth != 1 {
		t.Errorf("c1 %+v", p)
	}
	if p, _ := q.Position(ctx, "i3"); p.InHeat != 3 || p.Overall != 4 || p.Depth != 3 {
		t.Errorf("i3 %+v", p)
	}
	r.setFree(4)
	q.Dispatch(ctx)
	if got := r.order(); got != "c1 i1 i2 i3" {
		t.Errorf("order %q", got)
	}
}

func TestQueueRefusesBadEntries(t *testing.T) {
	ctx := context.Background()
	q, _ := newQueue(t, QueueConfig{MaxDepth: 1, MaxTimeout: time.Minute}, &MemJournal{}, &room{})
	enqueue(t, q, "a", HeatCold, 0)
	for _, tc := range []struct {
		e    Entry
		wait time.Duration
		err  error
	}{
		{Entry{ID: "a", Heat: HeatWarm}, 0, tartarus.ErrAlreadyExists},
		{Entry{ID: "b", Heat: HeatCold}, 0, tartarus.ErrResourceExhausted},
		{Entry{ID: "c", Heat: "tepid"}, 0, tartarus.ErrInvalid},
		{Entry{ID: "", Heat: HeatWarm}, 0, tartarus.ErrInvalid},
		{Entry{ID: "d", Heat: HeatWarm}, time.Hour, tartarus.ErrInvalid},
		{Entry{ID: "e", Heat: HeatWarm}, -time.Second, tartarus.ErrInvalid},
	} {
		if _, err := q.Enqueue(ctx, tc.e, tc.wait); !errors.Is(err, tc.err) {
			t.Errorf("%+v %s: %v, want %v", tc.e, tc.wait, err, tc.err)
		}
	}
	for _, tc := range []struct {
		s    int
		want time.Duration
		ok   bool
	}{{0, DefaultQueueTimeout, true}, {30, 30 * time.Second, true}, {60, time.Minute, true}, {61, 0, false}, {-1, 0, false}} {
		got, err := q.Timeout(tc.s)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("Timeout(%d) = %s, %v", tc.s, got, err)
		}
	}
	if err := q.Cancel(ctx, "a", "caller went away"); err != nil {
		t.Fatal(err)
	}
	if o, _ := q.Wait(ctx, "a"); o.Status != StatusCancelled || o.Reason != "caller went away" {
		t.Errorf("cancelled %+v", o)
	}
	if err := q.Cancel(ctx, "a", ""); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("cancel twice %v", err)
	}
	if _, err := q.Position(ctx, "zz"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("unknown %v", err)
	}
}

func TestQueueConfigValidate(t *testing.T) {
	err := (&QueueConfig{Policy: "lifo", Weights: map[HeatLevel]int{HeatCold: 0, "tepid": 3}, DefaultTimeout: time.Hour, MaxTimeout: time.Minute, MaxDepth: -1}).Validate()
	for _, want := range []string{`policy "lifo"`, "weight of cold 0", "weight of warm 0", `weight of "tepid"`, "must not be negative", "above the maximum"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v lacks %q", err, want)
		}
	}
	if _, err := NewQueue(QueueConfig{}, nil, nil, nil); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("nil parts: %v", err)
	}
}

func openSQLite(t *testing.T, path string) *SQLJournal {
	t.Helper()
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := Migrate(context.Background(), db); err != nil {
		t.Fatal(err)
	}
	j, err := NewSQLJournal(db, SQLite)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// A queued create survives a restart: a second queue over the same database
// file restores the entries in their order, serves those still in time and
// fails the overdue one with a reason.
func TestQueueSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "q.db")
	q1, _ := newQueue(t, QueueConfig{}, openSQLite(t, path), &room{})
	enqueue(t, q1, "short", HeatWarm, 5*time.Second)
	enqueue(t, q1, "w1", HeatWarm, time.Minute)
	enqueue(t, q1, "c1", HeatCold, time.Minute)
	q1.Dispatch(ctx)
	// The server stops here; the new one starts 10 s later.
	r := &room{}
	clk := clock.NewFake(t0.Add(10 * time.Second))
	q2, err := NewQueue(QueueConfig{}, clk, openSQLite(t, path), r.admit)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := q2.Restore(ctx); err != nil || n != 3 {
		t.Fatalf("restored %d, %v", n, err)
	}
	if p, _ := q2.Position(ctx, "w1"); p.InHeat != 2 {
		t.Errorf("w1 after restore %+v", p)
	}
	r.setFree(5)
	q2.Dispatch(ctx)
	if got := r.order(); got != "c1 w1" {
		t.Errorf("admitted %q", got)
	}
	if o, _ := q2.Wait(ctx, "short"); o.Status != StatusTimedOut || !strings.Contains(o.Reason, "waited 5s in the warm queue") {
		t.Errorf("short %+v", o)
	}
	// A third start restores nothing; the outcomes are in the journal.
	q3, err := NewQueue(QueueConfig{}, clock.NewFake(t0.Add(20*time.Second)), openSQLite(t, path), (&room{}).admit)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := q3.Restore(ctx); n != 0 {
		t.Errorf("restored %d finished entries", n)
	}
	if o, err := q3.Wait(ctx, "w1"); err != nil || o.Status != StatusAdmitted {
		t.Errorf("w1 from the journal %+v, %v", o, err)
	}
	// A new entry continues the sequence.
	enqueue(t, q3, "next", HeatCold, 0)
	prev, _ := q3.j.Get(ctx, "c1")
	rec, _ := q3.j.Get(ctx, "next")
	if rec.Seq <= prev.Seq {
		t.Errorf("seq %d after %d", rec.Seq, prev.Seq)
	}
}
