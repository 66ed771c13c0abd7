package cerberus

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

// AuditRecord is one audit entry as written to the log and served by
// GET /v1/audit: the seed's AuditEntry fields plus the decision's reason and
// the HTTP request. It holds no credential: an identity is named by its id,
// an API key by its key id.
type AuditRecord struct {
	// Seq and Prev chain the log (see AuditLog); Append sets them.
	Seq          uint64         `json:"seq,omitempty"`
	Prev         string         `json:"prev,omitempty"`
	Timestamp    time.Time      `json:"timestamp"`
	RequestID    string         `json:"request_id,omitempty"`
	Identity     *AuditIdentity `json:"identity,omitempty"`
	Action       Action         `json:"action,omitempty"`
	Resource     AuditResource  `json:"resource,omitzero"`
	Result       AuditResult    `json:"result"`
	Reason       string         `json:"reason,omitempty"`
	LatencyMS    float64        `json:"latency_ms"`
	SourceIP     string         `json:"source_ip,omitempty"`
	UserAgent    string         `json:"user_agent,omitempty"`
	Method       string         `json:"method,omitempty"`
	Path         string         `json:"path,omitempty"`
	Status       int            `json:"status,omitempty"`
	ErrorMessage string         `json:"error,omitempty"`
}

// AuditIdentity is the part of an Identity an audit entry keeps.
type AuditIdentity struct {
	ID         string       `json:"id"`
	Type       IdentityType `json:"type"`
	TenantID   string       `json:"tenant_id"`
	Roles      []string     `json:"roles,omitempty"`
	Groups     []string     `json:"groups,omitempty"`
	AuthMethod string       `json:"auth_method,omitempty"`
}

// AuditResource is Resource with JSON names.
type AuditResource struct {
	Type      ResourceType `json:"type,omitempty"`
	ID        string       `json:"id,omitempty"`
	TenantID  string       `json:"tenant_id,omitempty"`
	Namespace string       `json:"namespace,omitempty"`
}

// Record converts an entry to its logged form.
func (e *AuditEntry) Record() AuditRecord {
	r := AuditRecord{
		Timestamp: e.Timestamp.UTC(), RequestID: e.RequestID, Action: e.Action,
		Resource: AuditResource{Type: e.Resource.Type, ID: e.Resource.ID, TenantID: e.Resource.TenantID, Namespace: e.Resource.Namespace},
		Result:   e.Result, Reason: e.Reason, LatencyMS: float64(e.Latency.Microseconds()) / 1000,
		SourceIP: e.SourceIP, UserAgent: e.UserAgent, Method: e.Method, Path: e.Path, Status: e.Status,
		ErrorMessage: e.ErrorMessage,
	}
	if id := e.Identity; id != nil {
		r.Identity = &AuditIdentity{ID: id.ID, Type: id.Type, TenantID: id.TenantID, Roles: id.Roles, Groups: id.Groups, AuthMethod: id.Attributes["auth_method"]}
	}
	return r
}

// AuditLogConfig says where and how the audit log is kept.
type AuditLogConfig struct {
	Dir     string // the log is Dir/audit.log; rotated files audit-<time>.log beside it
	MaxSize int64  // rotate when the file passes this size; default 64 MiB
	Keep    int    // rotated files kept; default 10
	Clock   clock.Clock
}

// AuditLog is an append-only JSON-lines audit log, rotated by size.
//
// The log is a hash chain: every line carries a sequence number ("seq") and
// the SHA-256 of the line before it ("prev", hex), across rotations too (a
// new file's first line names the old file's last), so editing, deleting or
// reordering a line breaks the chain at the next one (VerifyAuditDir). A
// torn line left by a crash is hashed like any other, so it does not break
// the chain. What a chain cannot show by itself is the loss of the newest
// lines or of whole oldest files: VerifyAuditDir reports the first and last
// seq and the head hash, to compare with a copy kept elsewhere.
//
// Append returns only after the entry is on stable storage (fsync), and the
// gateway calls it before the response is complete, so no entry of an
// answered request is lost in a crash. Appends that arrive while one fsync
// runs are covered by the next one (group commit), so concurrent requests
// share fsyncs instead of queueing one each.
type AuditLog struct {
	dir     string
	maxSize int64
	keep    int
	clock   clock.Clock

	mu      sync.Mutex // guards f, size, written, seq, last
	f       *os.File
	size    int64
	written uint64
	seq     uint64   // of the last line written
	last    [32]byte // SHA-256 of the last line written
	noChain bool     // benchmarks only: the cost of the chain

	syncMu sync.Mutex // one fsync or rotation at a time; guards synced
	synced uint64
}

const auditFile = "audit.log"

// OpenAuditLog opens (creating if needed) the log in cfg.Dir.
func OpenAuditLog(cfg AuditLogConfig) (*AuditLog, error) {
	if cfg.MaxSize <= 0 {
		cfg.MaxSize = 64 << 20
	}
	if cfg.Keep <= 0 {
		cfg.Keep = 10
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	l := &AuditLog{dir: cfg.Dir, maxSize: cfg.MaxSize, keep: cfg.Keep, clock: cfg.Clock}
	if err := l.openCurrent(); err != nil {
		return nil, err
	}
	if err := l.loadHead(); err != nil {
		l.f.Close()
		return nil, err
	}
	return l, nil
}

// loadHead finds the chain's head: the hash and seq of the last line of the
// current file, or of the newest rotated one when the current is empty.
func (l *AuditLog) loadHead() error {
	names, err := l.rotated()
	if err != nil {
		return err
	}
	names = append(names, auditFile)
	for i := len(names) - 1; i >= 0; i-- {
		line, err := lastLine(filepath.Join(l.dir, names[i]))
		if err != nil {
			return fmt.Errorf("open audit log: %w", err)
		}
		if line == nil {
			continue
		}
		l.last = sha256.Sum256(line)
		var h chainHead
		if json.Unmarshal(line, &h) == nil {
			l.seq = h.Seq
		} else if line, err = lastGoodLine(filepath.Join(l.dir, names[i])); err == nil && line != nil {
			// A torn last line: go on from the seq before it.
			if json.Unmarshal(line, &h) == nil {
				l.seq = h.Seq + 1
			}
		}
		return nil
	}
	return nil
}

// chainHead is the part of a line the chain reads.
type chainHead struct {
	Seq  uint64 `json:"seq"`
	Prev string `json:"prev"`
}

// lastLine returns the last non-empty line of file (without its newline),
// nil for an empty or missing file.
func lastLine(file string) ([]byte, error) {
	lines, err := tailLines(file)
	if err != nil || len(lines) == 0 {
		return nil, err
	}
	return lines[len(lines)-1], nil
}

// lastGoodLine returns the last line of file that parses as JSON.
func lastGoodLine(file string) ([]byte, error) {
	lines, err := tailLines(file)
	for i := len(lines) - 1; i >= 0; i-- {
		if json.Valid(lines[i]) {
			return lines[i], nil
		}
	}
	return nil, err
}

// tailLines returns the complete non-empty lines of the last 1 MiB of file.
func tailLines(file string) ([][]byte, error) {
	f, err := os.Open(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := max(st.Size()-1<<20, 0)
	buf := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	lines := bytes.Split(buf, []byte{'\n'})
	if off > 0 {
		lines = lines[1:] // the first may be cut
	}
	var out [][]byte
	for _, ln := range lines {
		if len(ln) > 0 {
			out = append(out, ln)
		}
	}
	return out, nil
}

func (l *AuditLog) openCurrent() error {
	f, err := os.OpenFile(filepath.Join(l.dir, auditFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open audit log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("open audit log: %w", err)
	}
	l.f, l.size = f, st.Size()
	// A crash mid-write can leave a torn last line; end it so the next
	// entry starts on a line of its own.
	if l.size > 0 {
		last := make([]byte, 1)
		r, err := os.Open(f.Name())
		if err == nil {
			_, err = r.ReadAt(last, l.size-1)
			r.Close()
		}
		if err == nil && last[0] != '\n' {
			n, _ := f.Write([]byte{'\n'})
			l.size += int64(n)
		}
	}
	return nil
}

// Append writes one entry and waits until it is durable.
func (l *AuditLog) Append(ctx context.Context, rec AuditRecord) error {
	seq, err := l.write(rec)
	if err != nil {
		return err
	}
	return l.syncTo(seq)
}

// AppendLazy writes one entry without waiting for it to be durable: the
// next Append, rotation or Close makes it so. It is for entries an outsider
// can cause at will (failed authentications), whose fsyncs they would
// otherwise dictate.
func (l *AuditLog) AppendLazy(rec AuditRecord) error {
	_, err := l.write(rec)
	return err
}

// write appends rec to the file and returns its place in the write order.
func (l *AuditLog) write(rec AuditRecord) (uint64, error) {
	line, err := json.Marshal(rec)
	if err != nil {
		return 0, fmt.Errorf("audit: encode entry: %w", err)
	}
	line = append(line, '\n')
	// Seq and Prev are the log's to set.
	if rec.Seq != 0 || rec.Prev != "" {
		return 0, errors.New("audit: a record must not carry seq or prev")
	}

	for {
		l.mu.Lock()
		if l.f == nil {
			l.mu.Unlock()
			return 0, errors.New("audit: log is closed")
		}
		if l.size < l.maxSize {
			break // still holding mu
		}
		l.mu.Unlock()
		if err := l.rotateIfFull(); err != nil {
			return 0, err
		}
	}
	if !l.noChain {
		line = l.chainLocked(line)
	}
	n, err := l.f.Write(line)
	l.size += int64(n)
	l.written++
	seq := l.written
	l.mu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("audit: write: %w", err)
	}
	return seq, nil
}

// chainLocked puts the next seq and the previous line's hash at the front
// of line (a JSON object and its newline) and makes it the head. The rest
// was encoded outside the lock; only this splice and one hash run inside.
func (l *AuditLog) chainLocked(line []byte) []byte {
	l.seq++
	var b []byte
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, l.seq, 10)
	b = append(b, `,"prev":"`...)
	b = hex.AppendEncode(b, l.last[:])
	b = append(b, `",`...)
	b = append(b, line[1:]...)
	l.last = sha256.Sum256(b[:len(b)-1])
	return b
}

func (l *AuditLog) syncTo(seq uint64) error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	if l.synced >= seq {
		return nil
	}
	l.mu.Lock()
	target, f := l.written, l.f
	l.mu.Unlock()
	if f == nil {
		return errors.New("audit: log is closed")
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("audit: fsync: %w", err)
	}
	l.synced = target
	return nil
}

func (l *AuditLog) rotateIfFull() error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil || l.size < l.maxSize {
		return nil
	}
	return l.rotateLocked()
}

// rotateLocked renames the full file aside and starts a new one. Both
// syncMu and mu are held, so no write or fsync runs on the file being closed.
func (l *AuditLog) rotateLocked() error {
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	l.synced = l.written
	l.f.Close()
	l.f = nil
	// A sequence number keeps names unique (and in order) when two
	// rotations fall in the same clock tick.
	stamp := "audit-" + l.clock.Now().UTC().Format("20060102T150405.000000000Z")
	name := ""
	for i := 0; ; i++ {
		name = fmt.Sprintf("%s-%04d.log", stamp, i)
		if _, err := os.Lstat(filepath.Join(l.dir, name)); errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	if err := os.Rename(filepath.Join(l.dir, auditFile), filepath.Join(l.dir, name)); err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	if err := l.openCurrent(); err != nil {
		return err
	}
	if err := syncDir(l.dir); err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	old, err := l.rotated()
	if err != nil {
		return err
	}
	for len(old) > l.keep {
		os.Remove(filepath.Join(l.dir, old[0]))
		old = old[1:]
	}
	return nil
}

// rotated lists the rotated files, oldest first.
func (l *AuditLog) rotated() ([]string, error) {
	ents, err := os.ReadDir(l.dir)
	if err != nil {
		return nil, fmt.Errorf("audit: list: %w", err)
	}
	var out []string
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, "audit-") && strings.HasSuffix(n, ".log") {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out, nil
}

// Close syncs and closes the log.
func (l *AuditLog) Close() error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := errors.Join(l.f.Sync(), l.f.Close())
	l.f = nil
	return err
}

// AuditFilter selects entries for Query.
type AuditFilter struct {
	Tenant   string      // caller's or resource's tenant; "" or "*": all
	Identity string      // identity id or principal ("user:alice"); "": all
	Result   AuditResult // "": all
	Since    time.Time   // entries strictly after
	Limit    int         // the newest Limit matches; default 100
}

// Match reports whether r passes the filter.
func (f AuditFilter) Match(r *AuditRecord) bool {
	if f.Tenant != "" && f.Tenant != "*" {
		if r.Resource.TenantID != f.Tenant && (r.Identity == nil || r.Identity.TenantID != f.Tenant) {
			return false
		}
	}
	if f.Identity != "" {
		if r.Identity == nil || (r.Identity.ID != f.Identity && string(r.Identity.Type)+":"+r.Identity.ID != f.Identity) {
			return false
		}
	}
	if f.Result != "" && r.Result != f.Result {
		return false
	}
	return f.Since.IsZero() || r.Timestamp.After(f.Since)
}

// Query returns the newest entries that match f, oldest first. It reads the
// rotated files and the current one; lines that do not parse (a torn last
// line after a crash) are skipped.
func (l *AuditLog) Query(ctx context.Context, f AuditFilter) ([]AuditRecord, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	names, err := l.rotated()
	if err != nil {
		return nil, err
	}
	names = append(names, auditFile)
	var out []AuditRecord
	for _, n := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		fh, err := os.Open(filepath.Join(l.dir, n))
		if errors.Is(err, fs.ErrNotExist) {
			continue // pruned by a rotation meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("audit: read %s: %w", n, err)
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			var r AuditRecord
			if json.Unmarshal(sc.Bytes(), &r) != nil {
				continue
			}
			if !f.Match(&r) {
				continue
			}
			out = append(out, r)
			if len(out) > 2*f.Limit {
				out = append(out[:0], out[len(out)-f.Limit:]...)
			}
		}
		err = sc.Err()
		fh.Close()
		if err != nil {
			return nil, fmt.Errorf("audit: read %s: %w", n, err)
		}
	}
	if len(out) > f.Limit {
		out = out[len(out)-f.Limit:]
	}
	return out, nil
}
