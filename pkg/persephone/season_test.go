package persephone

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func mustZone(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatalf("tzdata: %v", err)
	}
	return loc
}

func cronSeason(id, start, end, zone string, prio int) *Season {
	return &Season{ID: id, Priority: prio, MaxNodes: 10, Schedule: SeasonSchedule{StartCron: start, EndCron: end, Timezone: zone}}
}

func active(t *testing.T, seasons []*Season, pinned string, at time.Time) string {
	t.Helper()
	s, err := Resolve(seasons, pinned, at)
	if err != nil {
		t.Fatal(err)
	}
	if s == nil {
		return ""
	}
	return s.ID
}

func TestSeasonWindows(t *testing.T) {
	berlin := mustZone(t, "Europe/Berlin")
	ny := mustZone(t, "America/New_York")
	office := cronSeason("office", "0 8 * * MON-FRI", "0 18 * * MON-FRI", "Europe/Berlin", 0)
	night := cronSeason("night", "0 22 * * *", "0 6 * * *", "Europe/Berlin", 0)
	// 02:30 does not exist on the spring-forward day and exists twice on
	// the fall-back day in Berlin.
	odd := cronSeason("odd", "30 2 * * *", "30 4 * * *", "Europe/Berlin", 0)
	nyNight := cronSeason("ny", "30 1 * * *", "0 3 * * *", "America/New_York", 0)
	tests := []struct {
		name    string
		seasons []*Season
		at      time.Time
		want    string
	}{
		{"office before start", []*Season{office}, time.Date(2026, 3, 4, 7, 59, 59, 0, berlin), ""},
		{"office at start", []*Season{office}, time.Date(2026, 3, 4, 8, 0, 0, 0, berlin), "office"},
		{"office just before end", []*Season{office}, time.Date(2026, 3, 4, 17, 59, 59, 999, berlin), "office"},
		{"office ends exactly at its end", []*Season{office}, time.Date(2026, 3, 4, 18, 0, 0, 0, berlin), ""},
		{"office not on saturday", []*Season{office}, time.Date(2026, 3, 7, 10, 0, 0, 0, berlin), ""},
		{"night before midnight", []*Season{night}, time.Date(2026, 1, 10, 23, 0, 0, 0, berlin), "night"},
		{"night after midnight", []*Season{night}, time.Date(2026, 1, 11, 0, 30, 0, 0, berlin), "night"},
		{"night at its end", []*Season{night}, time.Date(2026, 1, 11, 6, 0, 0, 0, berlin), ""},
		{"night midday", []*Season{night}, time.Date(2026, 1, 11, 12, 0, 0, 0, berlin), ""},
		// Berlin springs forward 2026-03-29 02:00 CET -> 03:00 CEST.
		{"office across spring forward starts 08:00 CEST", []*Season{office}, time.Date(2026, 3, 30, 8, 0, 0, 0, berlin), "office"},
		{"office 07:30 CEST is before", []*Season{office}, time.Date(2026, 3, 30, 7, 30, 0, 0, berlin), ""},
		{"night over the short night", []*Season{night}, time.Date(2026, 3, 29, 3, 30, 0, 0, berlin), "night"},
		{"night ends 06:00 CEST", []*Season{night}, time.Date(2026, 3, 29, 6, 0, 0, 0, berlin), ""},
		{"gap firing starts at gap end", []*Season{odd}, time.Date(2026, 3, 29, 1, 0, 0, 0, time.UTC), "odd"}, // 03:00 CEST
		{"gap firing not before gap", []*Season{odd}, time.Date(2026, 3, 29, 0, 59, 59, 0, time.UTC), ""},     // 01:59:59 CET
		// Berlin falls back 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 CEST is 00:30 UTC.
		{"overlap fires at first 02:30", []*Season{odd}, time.Date(2026, 10, 25, 0, 30, 0, 0, time.UTC), "odd"},
		{"overlap still on at second 02:30", []*Season{odd}, time.Date(2026, 10, 25, 1, 30, 0, 0, time.UTC), "odd"},
		{"overlap ends 04:30 CET", []*Season{odd}, time.Date(2026, 10, 25, 3, 30, 0, 0, time.UTC), ""},
		// New York falls back 2026-11-01 02:00 EDT -> 01:00 EST; 01:30 happens twice.
		{"ny first 01:30 EDT", []*Season{nyNight}, time.Date(2026, 11, 1, 5, 30, 0, 0, time.UTC), "ny"},
		{"ny second 01:30 EST still on", []*Season{nyNight}, time.Date(2026, 11, 1, 6, 30, 0, 0, time.UTC), "ny"},
		{"ny ends 03:00 EST", []*Season{nyNight}, time.Date(2026, 11, 1, 3, 0, 0, 0, ny), ""},
		// New York springs forward 2026-03-08 02:00 EST -> 03:00 EDT.
		{"ny spring 01:30 EST on", []*Season{nyNight}, time.Date(2026, 3, 8, 1, 45, 0, 0, ny), "ny"},
		{"ny spring 03:00 EDT off", []*Season{nyNight}, time.Date(2026, 3, 8, 3, 0, 0, 0, ny), ""},
		{"time range half-open start", []*Season{{ID: "launch", Schedule: SeasonSchedule{TimeRanges: []TimeRange{{Start: time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC), End: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)}}}}}, time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC), "launch"},
		{"time range half-open end", []*Season{{ID: "launch", Schedule: SeasonSchedule{TimeRanges: []TimeRange{{Start: time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC), End: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)}}}}}, time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC), ""},
		{"manual season never by schedule", []*Season{{ID: "summer"}}, time.Date(2026, 7, 1, 0, 0, 0, 0, time.UTC), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := active(t, tc.seasons, "", tc.at); got != tc.want {
				t.Fatalf("at %s: season %q, want %q", tc.at.In(time.UTC), got, tc.want)
			}
		})
	}
}

func TestSeasonOverlapPriority(t *testing.T) {
	day := cronSeason("day", "0 6 * * *", "0 22 * * *", "UTC", 0)
	lunch := cronSeason("lunch", "0 12 * * *", "0 14 * * *", "UTC", 0)
	low := cronSeason("low", "0 11 * * *", "0 15 * * *", "UTC", -1)
	high := cronSeason("high", "0 0 * * *", "0 23 * * *", "UTC", 5)
	twinA := cronSeason("a-twin", "0 12 * * *", "0 14 * * *", "UTC", 0)
	manual := &Season{ID: "summer"}
	at := func(h, m int) time.Time { return time.Date(2026, 6, 3, h, m, 0, 0, time.UTC) }
	tests := []struct {
		name    string
		seasons []*Season
		pinned  string
		at      time.Time
		want    string
	}{
		{"later window wins on equal priority", []*Season{day, lunch}, "", at(12, 30), "lunch"},
		{"outer resumes after inner ends", []*Season{day, lunch}, "", at(14, 0), "day"},
		{"lower priority loses though later", []*Season{day, low}, "", at(12, 30), "day"},
		{"higher priority wins", []*Season{day, lunch, high}, "", at(12, 30), "high"},
		{"id breaks full ties", []*Season{lunch, twinA}, "", at(12, 30), "a-twin"},
		{"pin beats schedule", []*Season{day, high, manual}, "summer", at(12, 30), "summer"},
		{"unknown pin falls back to schedule", []*Season{day}, "gone", at(12, 30), "day"},
		{"none", []*Season{lunch}, "", at(20, 0), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := active(t, tc.seasons, tc.pinned, tc.at); got != tc.want {
				t.Fatalf("season %q, want %q", got, tc.want)
			}
		})
	}
}

// TestRobfigDSTBehaviour documents why schedules are evaluated here rather
// than with robfig's Next: it skips a firing in the spring-forward gap.
func TestRobfigDSTBehaviour(t *testing.T) {
	berlin := mustZone(t, "Europe/Berlin")
	s, err := cron.ParseStandard("30 2 * * *")
	if err != nil {
		t.Fatal(err)
	}
	s.(*cron.SpecSchedule).Location = berlin
	next := s.Next(time.Date(2026, 3, 29, 0, 0, 0, 0, berlin))
	ours, _ := nextFiring(s.(*cron.SpecSchedule), berlin, time.Date(2026, 3, 29, 0, 0, 0, 0, berlin))
	if want := time.Date(2026, 3, 29, 3, 0, 0, 0, berlin); !ours.Equal(want) {
		t.Fatalf("our firing %s, want %s", ours, want)
	}
	if next.Day() == 29 {
		t.Logf("robfig now fires on the gap day at %s", next)
	} else {
		t.Logf("robfig skips the gap day: next firing %s", next)
	}
}

func TestWallInstant(t *testing.T) {
	berlin := mustZone(t, "Europe/Berlin")
	ny := mustZone(t, "America/New_York")
	tests := []struct {
		name string
		got  time.Time
		want time.Time
	}{
		{"ordinary", wallInstant(2026, 1, 5, 9, 0, berlin), time.Date(2026, 1, 5, 8, 0, 0, 0, time.UTC)},
		{"berlin gap", wallInstant(2026, 3, 29, 2, 30, berlin), time.Date(2026, 3, 29, 1, 0, 0, 0, time.UTC)},
		{"berlin overlap first", wallInstant(2026, 10, 25, 2, 30, berlin), time.Date(2026, 10, 25, 0, 30, 0, 0, time.UTC)},
		{"ny gap", wallInstant(2026, 3, 8, 2, 15, ny), time.Date(2026, 3, 8, 7, 0, 0, 0, time.UTC)},
		{"ny overlap first", wallInstant(2026, 11, 1, 1, 30, ny), time.Date(2026, 11, 1, 5, 30, 0, 0, time.UTC)},
	}
	for _, tc := range tests {
		if !tc.got.Equal(tc.want) {
			t.Errorf("%s: %s, want %s", tc.name, tc.got.UTC(), tc.want)
		}
	}
}

func TestSeasonValidate(t *testing.T) {
	tests := []struct {
		name string
		s    Season
		want []string
	}{
		{"ok", Season{ID: "ok", MaxNodes: 3, Schedule: SeasonSchedule{StartCron: "0 8 * * *", EndCron: "0 9 * * *", Timezone: "Europe/Berlin"}}, nil},
		{"everything wrong", Season{ID: "Bad ID", MinNodes: 5, MaxNodes: 2, TargetUtilization: 2,
			Schedule:    SeasonSchedule{StartCron: "0 8 * *", Timezone: "Mars/Base"},
			Prewarming:  PrewarmConfig{PoolSize: -1, LeadTime: 48 * time.Hour, Templates: []string{"../etc"}},
			ResourceMix: map[string]float64{"a": 0.8, "b": 0.8}},
			[]string{"id must match", "go together", "timezone", "expected exactly 5 fields", "max_nodes 2 below", "target_utilization", "pool_size", "lead_time", "templates", "sum to"}},
		{"node labels", Season{ID: "e", Prewarming: PrewarmConfig{NodeLabels: map[string]string{"pool": "a b"}}}, []string{"node_labels"}},
		{"every", Season{ID: "e", Schedule: SeasonSchedule{StartCron: "@every 5m", EndCron: "0 9 * * *"}}, []string{"@every"}},
		{"tz prefix", Season{ID: "e", Schedule: SeasonSchedule{StartCron: "CRON_TZ=UTC 0 8 * * *", EndCron: "0 9 * * *"}}, []string{"schedule.timezone"}},
		{"never fires", Season{ID: "e", Schedule: SeasonSchedule{StartCron: "0 8 30 2 *", EndCron: "0 9 * * *"}}, []string{"never fires"}},
		{"empty range", Season{ID: "e", Schedule: SeasonSchedule{TimeRanges: []TimeRange{{Start: time.Unix(10, 0), End: time.Unix(10, 0)}}}}, []string{"time_ranges[0]"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.s.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !errors.Is(err, tartarus.ErrInvalid) {
				t.Fatalf("err %v, want invalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestExampleSeasons(t *testing.T) {
	s := ExampleSeasons()
	if len(s) != 4 {
		t.Fatalf("%d seasons, want the seed's four", len(s))
	}
	var spring *Season
	for _, x := range s {
		if x.ID == "spring" {
			spring = x
		}
	}
	if spring == nil || spring.Prewarming.LeadTime != 30*time.Minute || spring.Prewarming.PoolSize != 10 || spring.MinNodes != 5 || spring.MaxNodes != 50 {
		t.Fatalf("spring = %+v", spring)
	}
	if got := active(t, s, "", time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)); got != "spring" {
		t.Fatalf("noon: %q", got)
	}
	if got := active(t, s, "winter", time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)); got != "winter" {
		t.Fatalf("pinned: %q", got)
	}
}

func TestParseSeasonsRefuses(t *testing.T) {
	for name, in := range map[string]string{
		"unknown key": "seasons:\n  - id: a\n    colour: red\n",
		"duplicate":   "seasons:\n  - id: a\n  - id: a\n",
		"bad yaml":    "seasons: [",
		"bad season":  "seasons:\n  - id: A\n",
	} {
		if _, err := ParseSeasons([]byte(in)); err == nil || !errors.Is(err, tartarus.ErrInvalid) {
			t.Errorf("%s: err %v", name, err)
		}
	}
}
