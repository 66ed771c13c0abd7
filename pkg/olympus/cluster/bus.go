package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Event is a message between replicas. Events only make things faster:
// every replica also polls the database, so a lost event delays, never
// loses, a command or its result.
type Event struct {
	Kind EventKind `json:"kind"`
	// Node is set for EventCommand and EventNodeDown, ID for EventDone
	// (a command's) and EventEnded (a sandbox's).
	Node string `json:"node,omitempty"`
	ID   string `json:"id,omitempty"`
}

// EventKind names an event.
type EventKind string

// The events.
const (
	// EventCommand: a command for Node is pending.
	EventCommand EventKind = "command"
	// EventDone: command ID has its result.
	EventDone EventKind = "done"
	// EventNodeDown: Node was marked down; its commands have ended, and
	// calls forwarded to it are cut.
	EventNodeDown EventKind = "node_down"
	// EventEnded: sandbox ID was terminated or failed; calls forwarded to
	// it are cut.
	EventEnded EventKind = "ended"
)

// Bus carries events to every replica, this one included.
type Bus interface {
	Publish(ctx context.Context, ev Event) error
	// Run delivers every event to deliver until ctx is done.
	Run(ctx context.Context, deliver func(Event)) error
}

// LocalBus is the Bus of a single replica: events go only to itself.
type LocalBus struct {
	mu      sync.Mutex
	deliver func(Event)
}

var _ Bus = (*LocalBus)(nil)

// Publish implements Bus.
func (b *LocalBus) Publish(ctx context.Context, ev Event) error {
	b.mu.Lock()
	d := b.deliver
	b.mu.Unlock()
	if d != nil {
		d(ev)
	}
	return nil
}

// Run implements Bus.
func (b *LocalBus) Run(ctx context.Context, deliver func(Event)) error {
	b.mu.Lock()
	b.deliver = deliver
	b.mu.Unlock()
	<-ctx.Done()
	return nil
}

// RedisChannel is the pub/sub channel replicas share.
const RedisChannel = "tartarus:events"

// RedisBus carries events over Redis pub/sub. The client reconnects and
// subscribes again by itself after Redis restarts.
type RedisBus struct {
	rdb *redis.Client
	log *slog.Logger
}

var _ Bus = (*RedisBus)(nil)

// NewRedisBus connects to the Redis at url (redis://HOST:PORT/DB).
func NewRedisBus(url string, log *slog.Logger) (*RedisBus, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("--redis %q: %w", url, err)
	}
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = 2*time.Second, 2*time.Second, 2*time.Second
	return &RedisBus{rdb: redis.NewClient(opt), log: log}, nil
}

// Ping checks that Redis answers.
func (b *RedisBus) Ping(ctx context.Context) error {
	if err := b.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	return nil
}

// Close closes the connections.
func (b *RedisBus) Close() error { return b.rdb.Close() }

// Publish implements Bus.
func (b *RedisBus) Publish(ctx context.Context, ev Event) error {
	data, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	if err := b.rdb.Publish(ctx, RedisChannel, data).Err(); err != nil {
		return fmt.Errorf("publish %s event: %w", ev.Kind, err)
	}
	return nil
}

// Run implements Bus.
func (b *RedisBus) Run(ctx context.Context, deliver func(Event)) error {
	sub := b.rdb.Subscribe(ctx, RedisChannel)
	defer sub.Close()
	ch := sub.Channel(redis.WithChannelHealthCheckInterval(5 * time.Second))
	for {
		select {
		case <-ctx.Done():
			return nil
		case m, ok := <-ch:
			if !ok {
				return nil
			}
			var ev Event
			if err := json.Unmarshal([]byte(m.Payload), &ev); err != nil {
				b.log.Warn("bad event on redis", "payload", m.Payload, "err", err)
				continue
			}
			deliver(ev)
		}
	}
}
