package persephone

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
	"go.yaml.in/yaml/v3"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// nameRE is what season IDs and template names look like.
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// Validate returns every problem with the season, joined.
func (s *Season) Validate() error {
	if s == nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "season: missing")
	}
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "season %q: "+format, append([]any{s.ID}, args...)...))
	}
	if !nameRE.MatchString(s.ID) {
		bad("id must match %s", nameRE)
	}
	if len(s.Name) > 200 || len(s.Description) > 2000 {
		bad("name (200) or description (2000 bytes) too long")
	}
	sc := s.Schedule
	if (sc.StartCron == "") != (sc.EndCron == "") {
		bad("start_cron and end_cron go together")
	}
	loc, err := loadZone(sc.Timezone)
	if err != nil {
		bad("timezone: %v", err)
	}
	for _, c := range []string{sc.StartCron, sc.EndCron} {
		if c == "" {
			continue
		}
		spec, err := parseCron(c)
		if err != nil {
			bad("%v", err)
			continue
		}
		if loc != nil {
			if _, ok := nextFiring(spec, loc, time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)); !ok {
				bad("cron %q never fires", c)
			}
		}
	}
	if len(sc.TimeRanges) > 1000 {
		bad("at most 1000 time ranges")
	}
	for i, r := range sc.TimeRanges {
		if r.Start.IsZero() || !r.End.After(r.Start) {
			bad("time_ranges[%d]: end must be after start", i)
		}
	}
	if s.Priority < -1000 || s.Priority > 1000 {
		bad("priority must be within -1000..1000")
	}
	if s.MinNodes < 0 || s.MaxNodes < 0 {
		bad("min_nodes and max_nodes must not be negative")
	}
	if s.MaxNodes != 0 && s.MaxNodes < s.MinNodes {
		bad("max_nodes %d below min_nodes %d", s.MaxNodes, s.MinNodes)
	}
	if s.TargetUtilization < 0 || s.TargetUtilization > 1 || math.IsNaN(s.TargetUtilization) {
		bad("target_utilization must be within 0..1")
	}
	p := s.Prewarming
	if p.PoolSize < 0 || p.PoolSize > 10000 {
		bad("prewarming.pool_size must be within 0..10000")
	}
	if p.LeadTime < 0 || p.LeadTime > 24*time.Hour {
		bad("prewarming.lead_time must be within 0..24h")
	}
	for _, t := range p.Templates {
		if !nameRE.MatchString(t) {
			bad("prewarming.templates: %q must match %s", t, nameRE)
		}
	}
	if len(p.NodeLabels) > tartarus.MaxNodeLabels {
		bad("prewarming.node_labels: at most %d", tartarus.MaxNodeLabels)
	}
	for k, v := range p.NodeLabels {
		if !tartarus.ValidLabel(k) || !tartarus.ValidLabel(v) {
			bad("prewarming.node_labels: %q=%q: want 1-63 characters of a-z, A-Z, 0-9, '-', '_', '.', '/'", k, v)
		}
	}
	sum := 0.0
	for k, v := range s.ResourceMix {
		if !nameRE.MatchString(k) || v < 0 || v > 1 || math.IsNaN(v) {
			bad("resource_mix[%q]: class must be a name and share within 0..1", k)
		}
		sum += v
	}
	if sum > 1+1e-9 {
		bad("resource_mix shares sum to %.3f, more than 1", sum)
	}
	return errors.Join(errs...)
}

// Manual reports whether the season has no schedule, so that only
// ApplySeason puts it in force.
func (s *Season) Manual() bool {
	return s.Schedule.StartCron == "" && len(s.Schedule.TimeRanges) == 0
}

func loadZone(name string) (*time.Location, error) {
	if name == "" {
		return time.UTC, nil
	}
	if len(name) > 64 {
		return nil, fmt.Errorf("zone name too long")
	}
	return time.LoadLocation(name)
}

// compiled is a validated season with its parsed schedule.
type compiled struct {
	season     *Season
	loc        *time.Location
	start, end *cron.SpecSchedule
}

func compile(s *Season) (*compiled, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	c := &compiled{season: s}
	c.loc, _ = loadZone(s.Schedule.Timezone)
	if s.Schedule.StartCron != "" {
		c.start, _ = parseCron(s.Schedule.StartCron)
		c.end, _ = parseCron(s.Schedule.EndCron)
	}
	return c, nil
}

// activeSince reports whether the season's schedule holds at, and since
// when its current window has held. A cron window is [start firing, next
// end firing): at the end firing's instant the season is over. When a
// start and an end fire at the same instant, the end wins.
func (c *compiled) activeSince(at time.Time) (time.Time, bool) {
	var since time.Time
	ok := false
	for _, r := range c.season.Schedule.TimeRanges {
		if !at.Before(r.Start) && at.Before(r.End) && (!ok || r.Start.After(since)) {
			since, ok = r.Start, true
		}
	}
	if c.start != nil {
		ps, found := prevFiring(c.start, c.loc, at)
		if found {
			pe, ended := prevFiring(c.end, c.loc, at)
			if (!ended || ps.After(pe)) && (!ok || ps.After(since)) {
				since, ok = ps, true
			}
		}
	}
	return since, ok
}

// Resolve returns the season in force at the instant at, or nil.
//
// The priority, in order: a pinned season (ApplySeason) wins while pinned;
// otherwise among the seasons whose schedule holds at that instant, the
// highest Priority wins; on equal priority the one whose current window
// started last (the more specific override) wins; then the smallest ID.
// Manual seasons hold only when pinned. Resolve is a pure function of its
// arguments.
func Resolve(seasons []*Season, pinned string, at time.Time) (*Season, error) {
	cs := make([]*compiled, 0, len(seasons))
	for _, s := range seasons {
		c, err := compile(s)
		if err != nil {
			return nil, err
		}
		cs = append(cs, c)
	}
	return resolve(cs, pinned, at), nil
}

func resolve(cs []*compiled, pinned string, at time.Time) *Season {
	if pinned != "" {
		for _, c := range cs {
			if c.season.ID == pinned {
				return c.season
			}
		}
	}
	var best *compiled
	var bestSince time.Time
	for _, c := range cs {
		since, ok := c.activeSince(at)
		if !ok {
			continue
		}
		if best == nil || c.season.Priority > best.season.Priority ||
			(c.season.Priority == best.season.Priority && (since.After(bestSince) ||
				(since.Equal(bestSince) && c.season.ID < best.season.ID))) {
			best, bestSince = c, since
		}
	}
	if best == nil {
		return nil
	}
	return best.season
}

// SeasonsFile is the seasons config file: YAML (or JSON) with a top-level
// "seasons" list. Durations are Go durations ("30m"), time ranges RFC 3339.
type SeasonsFile struct {
	Seasons []*Season `yaml:"seasons" json:"seasons"`
}

// ParseSeasons reads a seasons config file, refusing unknown keys,
// duplicate IDs and invalid seasons (every problem at once).
func ParseSeasons(data []byte) ([]*Season, error) {
	if len(data) > 1<<20 {
		return nil, tartarus.Errorf(tartarus.ErrTooLarge, "seasons file: larger than 1 MiB")
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var f SeasonsFile
	if err := dec.Decode(&f); err != nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "seasons file: %v", err)
	}
	if len(f.Seasons) > 1000 {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "seasons file: at most 1000 seasons")
	}
	var errs []error
	seen := map[string]bool{}
	for i, s := range f.Seasons {
		if s == nil {
			errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "seasons[%d]: empty", i))
			continue
		}
		if seen[s.ID] {
			errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "seasons[%d]: duplicate id %q", i, s.ID))
		}
		seen[s.ID] = true
		if err := s.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	sort.SliceStable(f.Seasons, func(i, j int) bool { return f.Seasons[i].ID < f.Seasons[j].ID })
	return f.Seasons, nil
}

//go:embed seasons.example.yaml
var exampleSeasons []byte

// ExampleSeasonsYAML is the shipped example config (the seed's four seasons).
func ExampleSeasonsYAML() []byte { return bytes.Clone(exampleSeasons) }

// ExampleSeasons returns fresh copies of the seed's four seasons, parsed
// from the shipped example config.
func ExampleSeasons() []*Season {
	s, err := ParseSeasons(exampleSeasons)
	if err != nil {
		panic("persephone: shipped seasons.example.yaml is invalid: " + err.Error())
	}
	return s
}

// String is a one-line description for logs and the CLI.
func (s *Season) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (priority %d, nodes %d..%d, util %.2f", s.ID, s.Priority, s.MinNodes, s.MaxNodes, s.TargetUtilization)
	if len(s.Prewarming.Templates) > 0 {
		fmt.Fprintf(&b, ", prewarm %v x%d lead %s", s.Prewarming.Templates, s.Prewarming.PoolSize, s.Prewarming.LeadTime)
	}
	b.WriteString(")")
	return b.String()
}
