package persephone

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// CSV import format (`tartarus forecast import FILE.csv`):
//
//	timestamp,active_vms,queue_depth,cpu_util,memory_util,launches,errors[,warm_launches,cold_launches][,launches:TEMPLATE...]
//	2026-03-02T09:00:00Z,42,0,0.61,0.55,7,0,5,2
//
// The header is required and names the columns; timestamp and active_vms
// are required, the other columns optional (0 when absent), in any order.
// Timestamps are RFC 3339, one row per minute (or per hour when every
// row's timestamp is on the hour and the file says "# resolution: 1h" on
// its first line), strictly increasing. Counts are non-negative integers,
// utilisations fractions in 0..1. Lines starting with # are comments.
// Anything else is refused with its line number; nothing is imported from
// a file with an error.

// CSV limits: a larger file is refused rather than read into memory.
const (
	MaxCSVRows    = 2_000_000 // about 3.8 years of minutes
	maxCSVColumns = 7 + maxTemplates
	maxCSVField   = 64
)

// ReadUsageCSV parses usage history in the CSV import format.
func ReadUsageCSV(r io.Reader) ([]*UsageRecord, error) {
	br := &peekReader{r: r}
	resolution := time.Minute
	if first, _ := br.peekLine(); strings.TrimSpace(first) == "# resolution: 1h" {
		resolution = time.Hour
	}
	cr := csv.NewReader(br)
	cr.Comment = '#'
	cr.ReuseRecord = true
	bad := func(line int, format string, args ...any) error {
		return tartarus.Errorf(tartarus.ErrInvalid, "usage csv: line %d: "+format, append([]any{line}, args...)...)
	}
	header, err := cr.Read()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "usage csv: empty file")
		}
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "usage csv: %v", err)
	}
	hline, _ := cr.FieldPos(0)
	if len(header) > maxCSVColumns {
		return nil, bad(hline, "%d columns, at most %d", len(header), maxCSVColumns)
	}
	cols := make([]string, len(header))
	seen := map[string]bool{}
	for i, h := range header {
		h = strings.TrimSpace(h)
		switch {
		case h == "timestamp", h == "active_vms", h == "queue_depth", h == "cpu_util", h == "memory_util", h == "launches", h == "errors",
			h == "warm_launches", h == "cold_launches":
		case strings.HasPrefix(h, MetricLaunchesPrefix) && nameRE.MatchString(strings.TrimPrefix(h, MetricLaunchesPrefix)):
		default:
			return nil, bad(hline, "column %d: unknown column %q", i+1, h)
		}
		if seen[h] {
			return nil, bad(hline, "column %q twice", h)
		}
		seen[h] = true
		cols[i] = h
	}
	if !seen["timestamp"] || !seen["active_vms"] {
		return nil, bad(hline, "the header must name timestamp and active_vms")
	}
	var out []*UsageRecord
	var prev time.Time
	for {
		row, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		line, _ := cr.FieldPos(0)
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				return nil, bad(pe.Line, "%v", pe.Err)
			}
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "usage csv: %v", err)
		}
		if len(out) >= MaxCSVRows {
			return nil, bad(line, "more than %d rows", MaxCSVRows)
		}
		rec := &UsageRecord{Resolution: resolution}
		for i, f := range row {
			f = strings.TrimSpace(f)
			if len(f) > maxCSVField {
				return nil, bad(line, "%s: field longer than %d bytes", cols[i], maxCSVField)
			}
			switch c := cols[i]; c {
			case "timestamp":
				t, err := time.Parse(time.RFC3339, f)
				if err != nil {
					return nil, bad(line, "timestamp %q: want RFC 3339 (2026-03-02T09:00:00Z)", f)
				}
				rec.Timestamp = t.UTC()
			case "cpu_util", "memory_util":
				v, err := strconv.ParseFloat(f, 64)
				if err != nil || math.IsNaN(v) || v < 0 || v > 1 {
					return nil, bad(line, "%s %q: want a fraction within 0..1", c, f)
				}
				if c == "cpu_util" {
					rec.CPUUtil = v
				} else {
					rec.MemoryUtil = v
				}
			default:
				v, err := strconv.Atoi(f)
				if err != nil || v < 0 || v > 1<<30 {
					return nil, bad(line, "%s %q: want a non-negative integer", c, f)
				}
				switch c {
				case "active_vms":
					rec.ActiveVMs = v
				case "queue_depth":
					rec.QueueDepth = v
				case "launches":
					rec.LaunchCount = v
				case "errors":
					rec.ErrorCount = v
				case "warm_launches":
					rec.WarmLaunches = v
				case "cold_launches":
					rec.ColdLaunches = v
				default:
					if rec.LaunchesByTemplate == nil {
						rec.LaunchesByTemplate = map[string]int{}
					}
					rec.LaunchesByTemplate[strings.TrimPrefix(c, MetricLaunchesPrefix)] = v
				}
			}
		}
		if rec.Timestamp.Truncate(resolution) != rec.Timestamp {
			return nil, bad(line, "timestamp %s is not on the %s", rec.Timestamp.Format(time.RFC3339), map[time.Duration]string{time.Minute: "minute", time.Hour: "hour"}[resolution])
		}
		if !prev.IsZero() && !rec.Timestamp.After(prev) {
			return nil, bad(line, "timestamp %s not after the previous row's %s", rec.Timestamp.Format(time.RFC3339), prev.Format(time.RFC3339))
		}
		if err := validateRecord(rec); err != nil {
			return nil, bad(line, "%v", err)
		}
		prev = rec.Timestamp
		out = append(out, rec)
	}
	if len(out) == 0 {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "usage csv: no rows")
	}
	return out, nil
}

// WriteUsageCSV writes records in the CSV import format (the export a
// backup or another cluster can import), with one launches:T column per
// template seen.
func WriteUsageCSV(w io.Writer, recs []*UsageRecord) error {
	tset := map[string]bool{}
	for _, r := range recs {
		for t := range r.LaunchesByTemplate {
			tset[t] = true
		}
	}
	var ts []string
	for t := range tset {
		ts = append(ts, t)
	}
	sort.Strings(ts)
	cw := csv.NewWriter(w)
	header := []string{"timestamp", "active_vms", "queue_depth", "cpu_util", "memory_util", "launches", "errors",
		"warm_launches", "cold_launches"}
	for _, t := range ts {
		header = append(header, MetricLaunchesPrefix+t)
	}
	if err := cw.Write(header); err != nil {
		return err
	}
	for _, r := range recs {
		row := []string{r.Timestamp.UTC().Format(time.RFC3339), strconv.Itoa(r.ActiveVMs), strconv.Itoa(r.QueueDepth),
			strconv.FormatFloat(r.CPUUtil, 'g', -1, 64), strconv.FormatFloat(r.MemoryUtil, 'g', -1, 64),
			strconv.Itoa(r.LaunchCount), strconv.Itoa(r.ErrorCount), strconv.Itoa(r.WarmLaunches), strconv.Itoa(r.ColdLaunches)}
		for _, t := range ts {
			row = append(row, strconv.Itoa(r.LaunchesByTemplate[t]))
		}
		if err := cw.Write(row); err != nil {
			return err
		}
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return fmt.Errorf("write usage csv: %w", err)
	}
	return nil
}

// peekReader lets the first line be looked at before csv reads it.
type peekReader struct {
	r   io.Reader
	buf []byte
}

func (p *peekReader) peekLine() (string, error) {
	tmp := make([]byte, 64)
	n, err := io.ReadFull(p.r, tmp)
	p.buf = append(p.buf, tmp[:n]...)
	line, _, _ := strings.Cut(string(p.buf), "\n")
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		err = nil
	}
	return strings.TrimRight(line, "\r"), err
}

func (p *peekReader) Read(b []byte) (int, error) {
	if len(p.buf) > 0 {
		n := copy(b, p.buf)
		p.buf = p.buf[n:]
		return n, nil
	}
	return p.r.Read(b)
}
