package cerberus

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// AuditVerifyReport is what VerifyAuditDir found.
type AuditVerifyReport struct {
	Files   []string `json:"files"`   // read, oldest first
	Entries int      `json:"entries"` // chained lines checked
	// FirstSeq and LastSeq bound the chain that is there. FirstSeq above 1
	// means older files were pruned by rotation (or removed): compare with
	// the rotation settings. Head is the SHA-256 of the last line; keep it
	// elsewhere to detect later loss of the newest lines.
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
	Head     string `json:"head"`
	// Torn counts lines that do not parse (a write cut by a crash); they
	// are hashed into the chain like any other line.
	Torn int `json:"torn"`
	// Unchained counts lines written before the log was chained.
	Unchained int `json:"unchained"`
	// Broken is the first broken link, nil when the chain holds.
	Broken *AuditBreak `json:"broken,omitempty"`
}

// AuditBreak is one broken link of the chain.
type AuditBreak struct {
	File   string `json:"file"`
	Line   int    `json:"line"` // 1-based, in File
	Seq    uint64 `json:"seq,omitempty"`
	Reason string `json:"reason"`
}

func (b *AuditBreak) String() string {
	return fmt.Sprintf("%s line %d (seq %d): %s", b.File, b.Line, b.Seq, b.Reason)
}

// auditFiles lists dir's rotated files (oldest first) and then the current one.
func auditFiles(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("audit: list %s: %w", dir, err)
	}
	var out []string
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, "audit-") && strings.HasSuffix(n, ".log") {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return append(out, auditFile), nil
}

// VerifyAuditDir walks the hash chain of the audit log in dir (every
// rotated file, then the current one) and reports the first broken link:
// a line whose prev is not the hash of the line before it (that line was
// edited, or lines between were removed or reordered) or whose seq does not
// follow. An error is returned only when the files cannot be read.
func VerifyAuditDir(ctx context.Context, dir string) (*AuditVerifyReport, error) {
	names, err := auditFiles(dir)
	if err != nil {
		return nil, err
	}
	rep := &AuditVerifyReport{}
	var (
		prev      []byte // hash of the line before, nil before the first
		prevSeq   uint64
		chained   bool // a chained line was seen
		tornSince bool // a torn line lies between prevSeq's line and this one
	)
	zero := strings.Repeat("0", 64)
	for _, n := range names {
		f, err := os.Open(filepath.Join(dir, n))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("audit: verify %s: %w", n, err)
		}
		rep.Files = append(rep.Files, n)
		r := bufio.NewReaderSize(f, 64<<10)
		lineNo := 0
		for {
			if err := ctx.Err(); err != nil {
				f.Close()
				return nil, err
			}
			line, rerr := r.ReadBytes('\n')
			if len(line) == 0 && rerr != nil {
				break
			}
			lineNo++
			line = []byte(strings.TrimSuffix(string(line), "\n"))
			if len(line) == 0 {
				continue
			}
			sum := sha256.Sum256(line)
			brk := func(seq uint64, reason string) {
				rep.Broken = &AuditBreak{File: n, Line: lineNo, Seq: seq, Reason: reason}
			}
			var h chainHead
			switch {
			case json.Unmarshal(line, &h) != nil:
				rep.Torn++
				tornSince = true
			case h.Prev == "":
				if chained {
					brk(0, "line without seq and prev after chained lines: inserted or rewritten")
				}
				rep.Unchained++
			default:
				want := prevSeq + 1
				if tornSince {
					want++ // the torn line had taken a seq
				}
				switch {
				case prev == nil && h.Seq == 1 && h.Prev != zero:
					brk(h.Seq, "the first entry of the log does not start the chain")
				case prev != nil && h.Prev != hex.EncodeToString(prev):
					brk(h.Seq, fmt.Sprintf("prev %.12s… is not the hash of the line before: that line was changed, or lines between were removed", h.Prev))
				case chained && h.Seq != want:
					brk(h.Seq, fmt.Sprintf("seq %d follows seq %d: entries are missing or reordered", h.Seq, prevSeq))
				}
				if !chained {
					rep.FirstSeq = h.Seq
				}
				chained, prevSeq, tornSince = true, h.Seq, false
				rep.LastSeq = h.Seq
				rep.Entries++
			}
			if rep.Broken != nil {
				f.Close()
				return rep, nil
			}
			prev = sum[:]
			if rerr != nil {
				break
			}
		}
		f.Close()
	}
	if prev != nil {
		rep.Head = hex.EncodeToString(prev)
	}
	return rep, nil
}
