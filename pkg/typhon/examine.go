package typhon

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// The examination rules (docs/quarantine.md). Each rule reads one kind of
// evidence and may add findings; every finding names the evidence it rests
// on and that evidence's source.

// Thresholds of the rules.
const (
	cpuHigh        = 90.0 // % of a core, sustained: high
	cpuMedium      = 50.0
	procsHigh      = 200 // processes: a fork bomb
	procsMedium    = 64
	netDeniedHigh  = 10
	netPortsCrit   = 20 // distinct destination ports: a port scan
	netAttemptsMed = 50
)

// severityWeight is w(s) in the risk formula.
var severityWeight = map[tartarus.Severity]float64{
	tartarus.SeverityInfo: 0, tartarus.SeverityLow: 0.1, tartarus.SeverityMedium: 0.3,
	tartarus.SeverityHigh: 0.6, tartarus.SeverityCritical: 0.9,
}

// trust is t(source) in the risk formula: what the guest (or a caller)
// says counts half, since it may lie.
func trust(s tartarus.EvidenceSource) float64 {
	if s == tartarus.SourceHost {
		return 1
	}
	return 0.5
}

// RiskScore is the published formula: a noisy-OR over the findings,
//
//	risk = 1 − Π (1 − w(severity) · t(source))
//
// with w = info 0, low 0.1, medium 0.3, high 0.6, critical 0.9 and t = 1
// for host-observed evidence, 0.5 for guest-reported or caller-given. It
// lies in [0, 1], grows with every finding and never reaches 1 on its own.
func RiskScore(fs []tartarus.Finding) float64 {
	keep := 1.0
	for _, f := range fs {
		keep *= 1 - severityWeight[f.Severity]*trust(f.Source)
	}
	r := 1 - keep
	return math.Round(math.Min(math.Max(r, 0), 1)*1000) / 1000
}

// Recommend maps a risk score and findings to an action: destroy at 0.8 or
// above, or on any critical host-observed finding; escalate (a person
// decides) from 0.5; monitor from 0.2; release below.
func Recommend(risk float64, fs []tartarus.Finding) tartarus.RecommendedAction {
	for _, f := range fs {
		if f.Severity == tartarus.SeverityCritical && f.Source == tartarus.SourceHost {
			return tartarus.ActionDestroy
		}
	}
	switch {
	case risk >= 0.8:
		return tartarus.ActionDestroy
	case risk >= 0.5:
		return tartarus.ActionEscalate
	case risk >= 0.2:
		return tartarus.ActionMonitor
	}
	return tartarus.ActionRelease
}

// spikeData is a resource_spike evidence's bytes.
type spikeData struct {
	HostCounters bool          `json:"host_counters"`
	Samples      []spikeSample `json:"samples"`
}

type spikeSample struct {
	CPUPercent float64 `json:"cpu_percent"`
	CPUDemand  float64 `json:"cpu_demand"`
	MemoryMB   float64 `json:"memory_mb"`
	Processes  int     `json:"processes"`
}

// netData is a network_log evidence's bytes.
type netData struct {
	Connections []netConn `json:"connections"`
}

type netConn struct {
	Dst     string `json:"dst"`
	Port    int    `json:"port"`
	Proto   string `json:"proto"`
	Allowed bool   `json:"allowed"`
}

// fileData is a file_access evidence's bytes (typhonnode.DiskDiff).
type fileData struct {
	ChangedBlocks int `json:"changed_blocks"`
	Files         []struct {
		Path string `json:"path"`
	} `json:"files"`
}

// sensitivePaths are where a write earns a high finding: accounts, sudo,
// ssh keys, the loader's preload, cron, system binaries and libraries.
var sensitivePaths = []string{"/etc/passwd", "/etc/shadow", "/etc/group", "/etc/sudoers", "/etc/ld.so.preload", "/etc/cron",
	"/etc/systemd/", "/etc/init.d/", "/root/.ssh/", "/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/", "/lib/", "/usr/lib/", "/lib64/", "/boot/"}

// filesMedium is how many changed files earn a medium finding on their own.
const filesMedium = 1000

// suspicious are command words that, run through the API, earn a finding.
var suspicious = []string{"nmap", "masscan", "xmrig", "minerd", "/dev/tcp", "nc -e", "ncat", "base64 -d",
	"curl | sh", "curl|sh", "wget | sh", "chmod +s", "insmod", "mkfifo", "iptables", ":(){"}

// examineEvidence applies the rules to a record's evidence, whose bytes are
// in data (by evidence id; missing bytes skip the rule).
func examineEvidence(rec *tartarus.QuarantineRecord, data map[string][]byte) []tartarus.Finding {
	var fs []tartarus.Finding
	add := func(ev *tartarus.Evidence, sev tartarus.Severity, cat, format string, args ...any) {
		fs = append(fs, tartarus.Finding{Severity: sev, Category: cat, Description: clean(fmt.Sprintf(format, args...), 512),
			EvidenceID: ev.ID, Source: ev.Source})
	}
	if rec.Trigger != "" {
		sev := tartarus.SeverityMedium
		if rec.Reason == tartarus.QuarantineNetworkAnomaly || rec.Reason == tartarus.QuarantinePolicyViolation {
			sev = tartarus.SeverityHigh
		}
		fs = append(fs, tartarus.Finding{Severity: sev, Category: "trigger", Source: tartarus.SourceHost,
			Description: clean(fmt.Sprintf("automatic quarantine (%s): %s", rec.Reason, rec.Trigger), 512)})
	}
	for i := range rec.Evidence {
		ev := &rec.Evidence[i]
		b, ok := data[ev.ID]
		switch ev.Type {
		case tartarus.EvidenceResourceSpike:
			var d spikeData
			if !ok || json.Unmarshal(b, &d) != nil || len(d.Samples) == 0 {
				continue
			}
			src := ev.Source
			if !d.HostCounters {
				src = tartarus.SourceGuest
			}
			maxProcs := 0
			for _, s := range d.Samples {
				maxProcs = max(maxProcs, s.Processes)
			}
			cpu := sustained(d.Samples, func(s spikeSample) float64 { return s.CPUPercent })
			level := cpu
			what := fmt.Sprintf("CPU at least %.0f%% of a core in two readings in a row", cpu)
			if demand := sustained(d.Samples, func(s spikeSample) float64 { return s.CPUDemand }); d.HostCounters && demand > cpu {
				// On a loaded host a spinning guest gets only its share
				// of a core, but stays runnable all the time.
				level = demand
				what = fmt.Sprintf("busiest host thread runnable at least %.0f%% of the time in two readings in a row (its CPU share %.0f%% of a core)", demand, cpu)
			}
			evc := *ev
			evc.Source = src
			switch {
			case level >= cpuHigh:
				add(&evc, tartarus.SeverityHigh, "cpu", "%s", what)
			case level >= cpuMedium:
				add(&evc, tartarus.SeverityMedium, "cpu", "%s", what)
			}
			// The process count comes from the guest's own report.
			evp := *ev
			evp.Source = tartarus.SourceGuest
			switch {
			case maxProcs >= procsHigh:
				add(&evp, tartarus.SeverityHigh, "processes", "%d processes (a fork bomb?)", maxProcs)
			case maxProcs >= procsMedium:
				add(&evp, tartarus.SeverityMedium, "processes", "%d processes", maxProcs)
			}
		case tartarus.EvidenceNetworkLog:
			var d netData
			if !ok || json.Unmarshal(b, &d) != nil {
				continue
			}
			denied, ports := 0, map[int]bool{}
			for _, c := range d.Connections {
				if !c.Allowed {
					denied++
				}
				ports[c.Port] = true
			}
			switch {
			case len(ports) >= netPortsCrit:
				add(ev, tartarus.SeverityCritical, "network", "connections to %d distinct ports (a port scan)", len(ports))
			case denied >= netDeniedHigh:
				add(ev, tartarus.SeverityHigh, "network", "%d connections denied by the egress policy", denied)
			case len(d.Connections) >= netAttemptsMed:
				add(ev, tartarus.SeverityMedium, "network", "%d outbound connections", len(d.Connections))
			}
		case tartarus.EvidenceExecHistory, tartarus.EvidenceProcessTree, tartarus.EvidenceSyscallTrace:
			if !ok {
				continue
			}
			hits := suspiciousWords(string(b))
			if len(hits) == 0 {
				continue
			}
			sev := tartarus.SeverityMedium
			if len(hits) >= 3 {
				sev = tartarus.SeverityHigh
			}
			add(ev, sev, string(ev.Type), "suspicious commands: %s", strings.Join(hits, ", "))
		case tartarus.EvidenceFileAccess:
			var d fileData
			if !ok || json.Unmarshal(b, &d) != nil {
				continue
			}
			var hit []string
			for _, f := range d.Files {
				for _, p := range sensitivePaths {
					if strings.HasPrefix(f.Path, p) && len(hit) < 8 {
						hit = append(hit, f.Path)
						break
					}
				}
			}
			switch {
			case len(hit) > 0:
				add(ev, tartarus.SeverityHigh, "files", "system files written: %s", strings.Join(hit, ", "))
			case len(d.Files) >= filesMedium:
				add(ev, tartarus.SeverityMedium, "files", "%d files written (%d blocks)", len(d.Files), d.ChangedBlocks)
			}
		case tartarus.EvidenceNote:
			add(ev, tartarus.SeverityInfo, "note", "%s", ev.Description)
		}
	}
	return fs
}

// sustained is the highest level a reading kept over two readings in a row
// (the one reading's, when there is only one).
func sustained(ss []spikeSample, f func(spikeSample) float64) float64 {
	if len(ss) == 1 {
		return f(ss[0])
	}
	best := 0.0
	for i := 1; i < len(ss); i++ {
		best = max(best, min(f(ss[i-1]), f(ss[i])))
	}
	return best
}

// suspiciousWords returns the suspicious words text holds, each once.
func suspiciousWords(text string) []string {
	low := strings.ToLower(text)
	var hits []string
	for _, w := range suspicious {
		if strings.Contains(low, w) && !slices.Contains(hits, w) {
			hits = append(hits, w)
		}
	}
	return hits
}

// clean makes attacker-controlled text safe to show: valid UTF-8, no
// control characters, at most n bytes.
func clean(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return ' '
		}
		return r
	}, s)
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
