package persephone

import (
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// Cron expressions are parsed by robfig/cron (five fields, names such as
// MON-FRI, descriptors such as @daily) but evaluated here, on the wall clock
// of the season's zone, because robfig's Next walks absolute hours: a firing
// inside a spring-forward gap is skipped for the day, and one inside a
// fall-back overlap fires twice. The rules here:
//
//   - a wall time that does not exist (spring forward) fires when the gap
//     ends (02:30 in Europe/Berlin on the last Sunday of March fires at
//     03:00 CEST);
//   - a wall time that exists twice (fall back) fires once, at its first
//     occurrence.

// maxLookback bounds how far back a firing is searched for: four years and a
// day, so that a schedule for 29 February is found.
const maxLookback = 4*366 + 1

// starBit is robfig's marker for a "*" in a field (cron.SpecSchedule).
const starBit = 1 << 63

// parseCron parses a five-field cron expression (or descriptor).
func parseCron(spec string) (*cron.SpecSchedule, error) {
	spec = strings.TrimSpace(spec)
	if strings.HasPrefix(spec, "TZ=") || strings.HasPrefix(spec, "CRON_TZ=") {
		return nil, fmt.Errorf("cron %q: set the zone in schedule.timezone, not in the expression", spec)
	}
	s, err := cron.ParseStandard(spec)
	if err != nil {
		return nil, fmt.Errorf("cron %q: %w", spec, err)
	}
	ss, ok := s.(*cron.SpecSchedule)
	if !ok {
		return nil, fmt.Errorf("cron %q: @every is not anchored to the clock; use a five-field expression", spec)
	}
	return ss, nil
}

// dayMatches is robfig's day rule: when either day field is "*", both must
// match; otherwise either may.
func dayMatches(s *cron.SpecSchedule, y int, mo time.Month, d int) bool {
	if s.Month&(1<<uint(mo)) == 0 {
		return false
	}
	wd := time.Date(y, mo, d, 12, 0, 0, 0, time.UTC).Weekday()
	dom := s.Dom&(1<<uint(d)) != 0
	dow := s.Dow&(1<<uint(wd)) != 0
	if s.Dom&starBit != 0 || s.Dow&starBit != 0 {
		return dom && dow
	}
	return dom || dow
}

// prevFiring returns the last firing of s at or before at, on the wall clock
// of loc, and false when there is none within maxLookback days.
func prevFiring(s *cron.SpecSchedule, loc *time.Location, at time.Time) (time.Time, bool) {
	local := at.In(loc)
	y, mo, d := local.Date()
	for back := 0; back <= maxLookback; back++ {
		day := time.Date(y, mo, d-back, 12, 0, 0, 0, time.UTC)
		dy, dmo, dd := day.Date()
		if !dayMatches(s, dy, dmo, dd) {
			continue
		}
		for h := 23; h >= 0; h-- {
			if s.Hour&(1<<uint(h)) == 0 {
				continue
			}
			for m := 59; m >= 0; m-- {
				if s.Minute&(1<<uint(m)) == 0 {
					continue
				}
				if t := wallInstant(dy, dmo, dd, h, m, loc); !t.After(at) {
					return t, true
				}
			}
		}
	}
	return time.Time{}, false
}

// nextFiring returns the first firing of s strictly after at, and false
// when there is none within maxLookback days.
func nextFiring(s *cron.SpecSchedule, loc *time.Location, at time.Time) (time.Time, bool) {
	local := at.In(loc)
	y, mo, d := local.Date()
	for fwd := 0; fwd <= maxLookback; fwd++ {
		day := time.Date(y, mo, d+fwd, 12, 0, 0, 0, time.UTC)
		dy, dmo, dd := day.Date()
		if !dayMatches(s, dy, dmo, dd) {
			continue
		}
		for h := 0; h < 24; h++ {
			if s.Hour&(1<<uint(h)) == 0 {
				continue
			}
			for m := 0; m < 60; m++ {
				if s.Minute&(1<<uint(m)) == 0 {
					continue
				}
				if t := wallInstant(dy, dmo, dd, h, m, loc); t.After(at) {
					return t, true
				}
			}
		}
	}
	return time.Time{}, false
}

// wallInstant returns the instant at which loc's wall clock reads the given
// date and time: the first such instant when it reads it twice, and the
// end of the gap when it never does.
func wallInstant(y int, mo time.Month, d, h, mi int, loc *time.Location) time.Time {
	wall := time.Date(y, mo, d, h, mi, 0, 0, time.UTC) // the wall clock read as UTC
	offsetAt := func(t time.Time) time.Duration {
		_, off := t.In(loc).Zone()
		return time.Duration(off) * time.Second
	}
	var best time.Time
	found := false
	// Zone transitions are days apart, so the offsets in force 36 hours
	// around are the only candidates.
	for _, probe := range []time.Duration{-36 * time.Hour, 0, 36 * time.Hour} {
		off := offsetAt(wall.Add(probe))
		u := wall.Add(-off)
		if offsetAt(u) == off && (!found || u.Before(best)) {
			best, found = u, true
		}
	}
	if found {
		return best.In(loc)
	}
	// A gap: before it the offset is smaller. lo has the old offset, hi
	// does not; the transition lies in (lo, hi].
	offBefore, offAfter := offsetAt(wall.Add(-36*time.Hour)), offsetAt(wall.Add(36*time.Hour))
	lo, hi := wall.Add(-offAfter), wall.Add(-offBefore)
	for hi.Sub(lo) > time.Second {
		mid := lo.Add(hi.Sub(lo) / 2).Truncate(time.Second)
		if offsetAt(mid) == offAfter {
			hi = mid
		} else {
			lo = mid
		}
	}
	return hi.In(loc)
}
