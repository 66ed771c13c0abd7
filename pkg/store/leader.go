package store

import (
	"context"
	"database/sql"
	"fmt"
)

// Lease is a Postgres session advisory lock held on a connection of its
// own: the replica holding it does what one replica of a cluster must do
// alone (the admission queue). It is lost with its connection.
type Lease struct {
	conn *sql.Conn
	key  int64
}

// TryLease takes the session advisory lock key if no other session holds
// it; nil without an error means another one does.
func (p *Postgres) TryLease(ctx context.Context, key int64) (*Lease, error) {
	conn, err := p.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("lease %#x: %w", key, err)
	}
	var ok bool
	if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&ok); err != nil {
		conn.Close()
		return nil, fmt.Errorf("lease %#x: %w", key, err)
	}
	if !ok {
		conn.Close()
		return nil, nil
	}
	return &Lease{conn: conn, key: key}, nil
}

// Check reports whether the lease's connection still answers (the lock
// lives as long as the session).
func (l *Lease) Check(ctx context.Context) error {
	return l.conn.PingContext(ctx)
}

// Release unlocks and closes the lease's connection.
func (l *Lease) Release(ctx context.Context) {
	_, _ = l.conn.ExecContext(ctx, `SELECT pg_advisory_unlock($1)`, l.key)
	_ = l.conn.Close()
}
