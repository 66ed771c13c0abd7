package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// The cluster's tables, kept only by Postgres: the nodes that registered,
// the commands they must carry out, and the sleep records of hibernated
// sandboxes (so that another node can wake one whose node went down).
//
// A node is "up" while it heartbeats and "down" once a replica's sweep
// finds its last heartbeat too old. A command is written in the same
// transaction as the change that needs it and stays pending until its
// node posts a result.

// Node states.
const (
	NodeUp   = "up"
	NodeDown = "down"
)

// NodeRecord is a registered node.
type NodeRecord struct {
	Name    string
	Address string
	State   string
	// Status is the node's last self-description (wire.NodeStatus JSON).
	Status       []byte
	LastSeen     time.Time
	RegisteredAt time.Time
	DownReason   string
	// Draining nodes take no new sandboxes (tartarus node drain).
	Draining bool
	// What the sandboxes placed on the node hold (those that are not
	// final and not hibernated), and how many are not final.
	UsedCPUs, UsedMemoryMB, Sandboxes int
}

// CommandRecord is one durable command.
type CommandRecord struct {
	Seq       int64
	ID        string
	Node      string
	SandboxID string
	Kind      string
	// Body is the command (wire.Command JSON); Result its result, once Done.
	Body      []byte
	Done      bool
	Result    []byte
	CreatedAt time.Time
	DoneAt    time.Time
}

// placementLock serialises placements across replicas, so two creates do
// not both take a node's last free memory.
const placementLock = 0x706c616365 // "place"

// Ping checks that the database answers.
func (p *Postgres) Ping(ctx context.Context) error { return p.db.PingContext(ctx) }

// Heartbeat records a node's heartbeat and marks it up. prev is the
// node's state before: "" for a node never seen, NodeDown for one that
// had been marked down.
func (p *Postgres) Heartbeat(ctx context.Context, name, address string, status []byte, at time.Time) (prev string, err error) {
	err = p.db.QueryRowContext(ctx, `
		WITH prev AS (SELECT state FROM nodes WHERE name = $1)
		INSERT INTO nodes (name, address, status, state, last_seen, registered_at)
		VALUES ($1, $2, $3, 'up', $4, $4)
		ON CONFLICT (name) DO UPDATE SET address = EXCLUDED.address, status = EXCLUDED.status,
			state = 'up', last_seen = EXCLUDED.last_seen, down_reason = ''
		RETURNING COALESCE((SELECT state FROM prev), '')`,
		name, address, string(status), nanos(at)).Scan(&prev)
	if err != nil {
		return "", fmt.Errorf("heartbeat of node %s: %w", name, err)
	}
	return prev, nil
}

const nodeColumns = `n.name, n.address, n.state, n.status, n.last_seen, n.registered_at, n.down_reason, n.draining,
	COALESCE(u.cpus, 0), COALESCE(u.memory_mb, 0), COALESCE(u.n, 0)`

const nodeUsage = `LEFT JOIN (SELECT node, SUM(cpus) FILTER (WHERE state <> 'hibernated') AS cpus,
		SUM(memory_mb) FILTER (WHERE state <> 'hibernated') AS memory_mb, COUNT(*) AS n
	FROM sandboxes WHERE state NOT IN ('terminated', 'failed') GROUP BY node) u ON u.node = n.name`

func scanNode(r scanner) (*NodeRecord, error) {
	var n NodeRecord
	var status string
	var seen, reg int64
	if err := r.Scan(&n.Name, &n.Address, &n.State, &status, &seen, &reg, &n.DownReason, &n.Draining,
		&n.UsedCPUs, &n.UsedMemoryMB, &n.Sandboxes); err != nil {
		return nil, err
	}
	n.Status, n.LastSeen, n.RegisteredAt = []byte(status), fromNanos(seen), fromNanos(reg)
	return &n, nil
}

// Nodes lists every registered node, by name.
func (p *Postgres) Nodes(ctx context.Context) ([]*NodeRecord, error) {
	return queryNodes(ctx, p.db, `SELECT `+nodeColumns+` FROM nodes n `+nodeUsage+` ORDER BY n.name`)
}

// Node returns one node or an error wrapping ErrNotFound.
func (p *Postgres) Node(ctx context.Context, name string) (*NodeRecord, error) {
	n, err := scanNode(p.db.QueryRowContext(ctx, `SELECT `+nodeColumns+` FROM nodes n `+nodeUsage+` WHERE n.name = $1`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "node %s", name)
	}
	if err != nil {
		return nil, fmt.Errorf("get node %s: %w", name, err)
	}
	return n, nil
}

type querier interface {
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
}

func queryNodes(ctx context.Context, db querier, q string, args ...any) ([]*NodeRecord, error) {
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	defer rows.Close()
	var out []*NodeRecord
	for rows.Next() {
		n, err := scanNode(rows)
		if err != nil {
			return nil, fmt.Errorf("list nodes: %w", err)
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

// ForgetNode removes a down node that holds no live sandbox from the
// cluster (a host that will not come back). If its agent does come back,
// it registers anew.
func (p *Postgres) ForgetNode(ctx context.Context, name string) error {
	tx, err := p.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("forget node %s: %w", name, err)
	}
	defer tx.Rollback()
	var state string
	err = tx.QueryRowContext(ctx, `SELECT state FROM nodes WHERE name = $1 FOR UPDATE`, name).Scan(&state)
	if errors.Is(err, sql.ErrNoRows) {
		return tartarus.Errorf(tartarus.ErrNotFound, "node %s", name)
	}
	if err != nil {
		return fmt.Errorf("forget node %s: %w", name, err)
	}
	if state != NodeDown {
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "node %s is %s: stop its agent and wait until it is marked down", name, state)
	}
	var live int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM sandboxes WHERE node = $1 AND state NOT IN ('terminated', 'failed')`,
		name).Scan(&live); err != nil {
		return fmt.Errorf("forget node %s: %w", name, err)
	}
	if live > 0 {
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "node %s still holds %d live sandboxes", name, live)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM nodes WHERE name = $1`, name); err != nil {
		return fmt.Errorf("forget node %s: %w", name, err)
	}
	return tx.Commit()
}

// StaleNodes lists the up nodes whose last heartbeat is before `before`.
func (p *Postgres) StaleNodes(ctx context.Context, before time.Time) ([]*NodeRecord, error) {
	return queryNodes(ctx, p.db, `SELECT `+nodeColumns+` FROM nodes n `+nodeUsage+`
		WHERE n.state = 'up' AND n.last_seen < $1 ORDER BY n.name`, nanos(before))
}

// LoseNode marks node down, if it is still up with its last heartbeat
// before `before`, and in the same transaction settles its sandboxes:
// hibernated ones whose snapshots other nodes can read (keepHibernated)
// are left unassigned, to wake elsewhere; every other live one fails with
// reason. The node's pending commands end with failed (their JSON result).
// It reports whether it marked the node down (of two replicas sweeping at
// once, one does) and the ids it changed.
func (p *Postgres) LoseNode(ctx context.Context, node string, before time.Time, downReason string, keepHibernated bool, reason string, failed []byte, at time.Time) (bool, []string, error) {
	tx, err := p.db.BeginTx(ctx, nil)
	if err != nil {
		return false, nil, fmt.Errorf("lose node %s: %w", node, err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `UPDATE nodes SET state = 'down', down_reason = $1
		WHERE name = $2 AND state = 'up' AND last_seen < $3`, downReason, node, nanos(before))
	if err != nil {
		return false, nil, fmt.Errorf("mark node %s down: %w", node, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return false, nil, nil // it heartbeated, or another replica took it
	}
	var ids []string
	collect := func(q string, args ...any) error {
		rows, err := tx.QueryContext(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				return err
			}
			ids = append(ids, id)
		}
		return rows.Err()
	}
	if keepHibernated {
		if err := collect(`UPDATE sandboxes SET node = '', updated_at = $2 WHERE node = $1 AND state = 'hibernated' RETURNING id`,
			node, nanos(at)); err != nil {
			return false, nil, fmt.Errorf("lose node %s: %w", node, err)
		}
	}
	if err := collect(`UPDATE sandboxes SET state = 'failed', error = $2, updated_at = $3
		WHERE node = $1 AND state NOT IN ('terminated', 'failed') RETURNING id`, node, reason, nanos(at)); err != nil {
		return false, nil, fmt.Errorf("lose node %s: %w", node, err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE commands SET done = TRUE, result = $2, done_at = $3 WHERE node = $1 AND NOT done`,
		node, string(failed), nanos(at)); err != nil {
		return false, nil, fmt.Errorf("lose node %s: %w", node, err)
	}
	return true, ids, tx.Commit()
}

// PlaceFunc chooses a node among the up nodes and returns the sandbox to
// record there (nil to record none) and the command that creates or wakes
// it. taken says whether a sandbox id is in use already (a node's warm
// sandbox that another create took).
type PlaceFunc func(nodes []*NodeRecord, taken func(id string) bool) (*tartarus.Sandbox, *CommandRecord, error)

// IdempotencyKey names a create that a client may send again (its
// Idempotency-Key header, per tenant).
type IdempotencyKey struct {
	Tenant, Key string
}

// Place runs place over the up nodes, with placements of every replica
// serialised, and records what it returns in one transaction: a new
// sandbox is inserted; an existing one (an unassigned hibernated sandbox
// being adopted) moves to the chosen node if it is still unassigned.
//
// With an idempotency key (Key not empty) already used, nothing is placed
// and the id of the sandbox that key created is returned instead; a new
// key is recorded with the new sandbox.
func (p *Postgres) Place(ctx context.Context, idem IdempotencyKey, place PlaceFunc) (existing string, err error) {
	tx, err := p.db.BeginTx(ctx, nil)
	if err != nil {
		return "", fmt.Errorf("place: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(placementLock)); err != nil {
		return "", fmt.Errorf("placement lock: %w", err)
	}
	if idem.Key != "" {
		err := tx.QueryRowContext(ctx, `SELECT sandbox_id FROM idempotency WHERE tenant = $1 AND key = $2`,
			idem.Tenant, idem.Key).Scan(&existing)
		if err == nil {
			return existing, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return "", fmt.Errorf("idempotency key: %w", err)
		}
	}
	nodes, err := queryNodes(ctx, tx, `SELECT `+nodeColumns+` FROM nodes n `+nodeUsage+` WHERE n.state = 'up' AND NOT n.draining ORDER BY n.name`)
	if err != nil {
		return "", err
	}
	taken := func(id string) bool {
		var used bool
		if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM sandboxes WHERE id = $1)`, id).Scan(&used); err != nil {
			return true
		}
		return used
	}
	sb, cmd, err := place(nodes, taken)
	if err != nil {
		return "", err
	}
	if sb != nil {
		res, err := tx.ExecContext(ctx, `UPDATE sandboxes SET node = $1, updated_at = $2 WHERE id = $3 AND node = '' AND state = 'hibernated'`,
			sb.Node, nanos(sb.UpdatedAt), sb.ID)
		if err != nil {
			return "", fmt.Errorf("assign sandbox %s: %w", sb.ID, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			if err := p.insertSandbox(ctx, tx, sb); err != nil {
				return "", err
			}
		}
		if idem.Key != "" {
			if _, err := tx.ExecContext(ctx, `INSERT INTO idempotency (tenant, key, sandbox_id, created_at) VALUES ($1, $2, $3, $4)`,
				idem.Tenant, idem.Key, sb.ID, nanos(sb.CreatedAt)); err != nil {
				return "", fmt.Errorf("idempotency key: %w", err)
			}
		}
	}
	if err := insertCommand(ctx, tx, cmd); err != nil {
		return "", err
	}
	return "", tx.Commit()
}

// AddCommand records a command for a sandbox on its node, if the sandbox
// is still there (else ErrFailedPrecondition: it moved or was lost).
func (p *Postgres) AddCommand(ctx context.Context, cmd *CommandRecord) error {
	tx, err := p.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("add command: %w", err)
	}
	defer tx.Rollback()
	var node string
	err = tx.QueryRowContext(ctx, `SELECT node FROM sandboxes WHERE id = $1 FOR UPDATE`, cmd.SandboxID).Scan(&node)
	if errors.Is(err, sql.ErrNoRows) {
		return tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", cmd.SandboxID)
	}
	if err != nil {
		return fmt.Errorf("add command: %w", err)
	}
	if node != cmd.Node {
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is no longer on node %s", cmd.SandboxID, cmd.Node)
	}
	if err := insertCommand(ctx, tx, cmd); err != nil {
		return err
	}
	return tx.Commit()
}

// AddNodeCommand records a command for a node that is about no sandbox
// the node holds (discarding a snapshot in shared storage).
func (p *Postgres) AddNodeCommand(ctx context.Context, cmd *CommandRecord) error {
	tx, err := p.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("add command: %w", err)
	}
	defer tx.Rollback()
	if err := insertCommand(ctx, tx, cmd); err != nil {
		return err
	}
	return tx.Commit()
}

func insertCommand(ctx context.Context, tx *sql.Tx, c *CommandRecord) error {
	err := tx.QueryRowContext(ctx, `INSERT INTO commands (id, node, sandbox_id, kind, body, created_at)
		VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq`,
		c.ID, c.Node, c.SandboxID, c.Kind, string(c.Body), nanos(c.CreatedAt)).Scan(&c.Seq)
	if err != nil {
		return fmt.Errorf("insert command %s: %w", c.ID, err)
	}
	return nil
}

const commandColumns = `seq, id, node, sandbox_id, kind, body, done, result, created_at, done_at`

func scanCommand(r scanner) (*CommandRecord, error) {
	var c CommandRecord
	var body, result string
	var created, done int64
	if err := r.Scan(&c.Seq, &c.ID, &c.Node, &c.SandboxID, &c.Kind, &body, &c.Done, &result, &created, &done); err != nil {
		return nil, err
	}
	c.Body, c.Result, c.CreatedAt, c.DoneAt = []byte(body), []byte(result), fromNanos(created), fromNanos(done)
	return &c, nil
}

// PendingCommands returns up to limit commands of node not yet done,
// oldest first.
func (p *Postgres) PendingCommands(ctx context.Context, node string, limit int) ([]*CommandRecord, error) {
	rows, err := p.db.QueryContext(ctx, `SELECT `+commandColumns+` FROM commands WHERE node = $1 AND NOT done ORDER BY seq LIMIT $2`, node, limit)
	if err != nil {
		return nil, fmt.Errorf("pending commands of %s: %w", node, err)
	}
	defer rows.Close()
	var out []*CommandRecord
	for rows.Next() {
		c, err := scanCommand(rows)
		if err != nil {
			return nil, fmt.Errorf("pending commands of %s: %w", node, err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// Command returns one command or an error wrapping ErrNotFound.
func (p *Postgres) Command(ctx context.Context, id string) (*CommandRecord, error) {
	c, err := scanCommand(p.db.QueryRowContext(ctx, `SELECT `+commandColumns+` FROM commands WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "command %s", id)
	}
	if err != nil {
		return nil, fmt.Errorf("get command %s: %w", id, err)
	}
	return c, nil
}

// FinishCommand records node's result of a command. Only the first result
// counts; first says whether this was it. A command of another node is
// ErrNotFound.
func (p *Postgres) FinishCommand(ctx context.Context, node, id string, result []byte, at time.Time) (first bool, err error) {
	res, err := p.db.ExecContext(ctx, `UPDATE commands SET done = TRUE, result = $1, done_at = $2 WHERE id = $3 AND node = $4 AND NOT done`,
		string(result), nanos(at), id, node)
	if err != nil {
		return false, fmt.Errorf("finish command %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return true, nil
	}
	c, err := p.Command(ctx, id)
	if err != nil {
		return false, err
	}
	if c.Node != node {
		return false, tartarus.Errorf(tartarus.ErrNotFound, "command %s", id)
	}
	return false, nil
}

// Report records a sandbox as its node has it. It is ignored (applied
// false) when the sandbox belongs to another node, when the cluster has
// already settled it as terminated or failed, or when the recorded state
// is newer. A sandbox the cluster has never seen (a fork's copy) is
// inserted.
func (p *Postgres) Report(ctx context.Context, node string, sb *tartarus.Sandbox) (applied bool, err error) {
	on := *sb
	on.Node = node
	args, err := sandboxArgs(&on)
	if err != nil {
		return false, err
	}
	res, err := p.db.ExecContext(ctx, p.d.q(insertColumns+`
		ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at,
			expires_at = EXCLUDED.expires_at, last_activity_at = GREATEST(sandboxes.last_activity_at, EXCLUDED.last_activity_at),
			error = EXCLUDED.error, snapshot_bytes = EXCLUDED.snapshot_bytes, network = EXCLUDED.network
		WHERE sandboxes.node = EXCLUDED.node AND sandboxes.state NOT IN ('terminated', 'failed')
			AND sandboxes.updated_at <= EXCLUDED.updated_at`), args...)
	if err != nil {
		return false, fmt.Errorf("report sandbox %s: %w", sb.ID, err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

// Reclaim gives an unassigned hibernated sandbox back to node (the node it
// slept on, back before anyone woke it elsewhere); it reports whether it
// did.
func (p *Postgres) Reclaim(ctx context.Context, id, node string, at time.Time) (bool, error) {
	res, err := p.db.ExecContext(ctx, `UPDATE sandboxes SET node = $1, updated_at = $2
		WHERE id = $3 AND node = '' AND state = 'hibernated'`, node, nanos(at), id)
	if err != nil {
		return false, fmt.Errorf("reclaim sandbox %s: %w", id, err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

// SetDraining marks a node draining (it takes no new sandboxes) or not.
func (p *Postgres) SetDraining(ctx context.Context, name string, draining bool) error {
	res, err := p.db.ExecContext(ctx, `UPDATE nodes SET draining = $1 WHERE name = $2`, draining, name)
	if err != nil {
		return fmt.Errorf("drain node %s: %w", name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return tartarus.Errorf(tartarus.ErrNotFound, "node %s", name)
	}
	return nil
}

// Unassign takes a hibernated sandbox back from node (which refused to
// wake it), to wake elsewhere; it reports whether it did.
func (p *Postgres) Unassign(ctx context.Context, id, node string, at time.Time) (bool, error) {
	res, err := p.db.ExecContext(ctx, `UPDATE sandboxes SET node = '', updated_at = $1
		WHERE id = $2 AND node = $3 AND state = 'hibernated'`, nanos(at), id, node)
	if err != nil {
		return false, fmt.Errorf("unassign sandbox %s: %w", id, err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

// PutSleep keeps the sleep record (JSON) of a hibernated sandbox.
func (p *Postgres) PutSleep(ctx context.Context, id string, record []byte) error {
	_, err := p.db.ExecContext(ctx, `INSERT INTO cluster_sleep (sandbox_id, record) VALUES ($1, $2)
		ON CONFLICT (sandbox_id) DO UPDATE SET record = EXCLUDED.record`, id, string(record))
	if err != nil {
		return fmt.Errorf("put sleep record %s: %w", id, err)
	}
	return nil
}

// Sleep returns a sandbox's sleep record or an error wrapping ErrNotFound.
func (p *Postgres) Sleep(ctx context.Context, id string) ([]byte, error) {
	var rec string
	err := p.db.QueryRowContext(ctx, `SELECT record FROM cluster_sleep WHERE sandbox_id = $1`, id).Scan(&rec)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "sleep record of %s", id)
	}
	if err != nil {
		return nil, fmt.Errorf("get sleep record %s: %w", id, err)
	}
	return []byte(rec), nil
}
