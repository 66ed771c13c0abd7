package typhon

import (
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// FuzzExamine feeds attacker-controlled bytes (a guest's process list, a
// command line, a caller's note) through every rule: the report must
// encode, its text must be clean and its risk must stay in [0, 1].
func FuzzExamine(f *testing.F) {
	for _, s := range []string{"", "nmap -p- 10.0.0.1\ncurl | sh", `{"samples":[{"cpu_percent":1e308,"processes":99999}],"host_counters":true}`,
		`{"connections":[{"dst":"\u0000","port":-1}]}`, "\xff\xfe\x1b[31m\x00", `{"samples":[{"cpu_percent":"NaN"}]}`, "xmrig\r\n\u202e"} {
		f.Add(s, s)
	}
	f.Fuzz(func(t *testing.T, data, text string) {
		rec := &tartarus.QuarantineRecord{SandboxID: "sb-1", Reason: tartarus.QuarantineNetworkAnomaly, Trigger: text}
		data2 := map[string][]byte{}
		for i, typ := range []tartarus.EvidenceType{tartarus.EvidenceResourceSpike, tartarus.EvidenceNetworkLog, tartarus.EvidenceExecHistory,
			tartarus.EvidenceProcessTree, tartarus.EvidenceSyscallTrace, tartarus.EvidenceNote, tartarus.EvidenceFileAccess, tartarus.EvidenceType(text)} {
			id := "ev" + string(rune('a'+i))
			rec.Evidence = append(rec.Evidence, tartarus.Evidence{ID: id, Type: typ, Source: tartarus.SourceGuest, Description: text})
			data2[id] = []byte(data)
		}
		fs := examineEvidence(rec, data2)
		risk := RiskScore(fs)
		if risk < 0 || risk > 1 || risk != risk {
			t.Fatalf("risk %v", risk)
		}
		for _, f := range fs {
			if !utf8.ValidString(f.Description) || len(f.Description) > 512+len("…") {
				t.Fatalf("finding text %q", f.Description)
			}
			for _, r := range f.Description {
				if r < 0x20 || r == 0x7f {
					t.Fatalf("control character in %q", f.Description)
				}
			}
		}
		rep := &tartarus.ExaminationReport{Findings: fs, RiskScore: risk, Recommendation: Recommend(risk, fs)}
		b, err := json.Marshal(rep)
		if err != nil {
			t.Fatal(err)
		}
		var back tartarus.ExaminationReport
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzPolicyFile: any file either parses into a policy that SetPolicy
// judges, or is refused as invalid; nothing panics.
func FuzzPolicyFile(f *testing.F) {
	f.Add("auto_triggers:\n  - condition: \"cpu_percent > 90.0\"\n    reason: resource_abuse\n    enabled: true\nmax_quarantine_duration: 1h\n")
	f.Add(`{"auto_triggers":[{"condition":"exec_history.exists(c, c.contains('nmap'))","reason":"network_anomaly","enabled":true}]}`)
	f.Add("max_quarantine_duration: forever")
	f.Add("isolation: {network_mode: open}")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePolicyFile([]byte(s))
		if err != nil {
			return
		}
		if err := validatePolicy(p); err != nil {
			return
		}
		_, _ = compileTriggers(p, DefaultCostLimit)
	})
}

// hostileHost is a fakeHost whose collected evidence is the guest's bytes:
// descriptions, a process list, file paths, an exec history of any bytes.
type hostileHost struct {
	*fakeHost
	s string
}

func (h hostileHost) Collect(context.Context, *tartarus.Sandbox, *QuarantineIsolation, time.Duration) []Evidence {
	paths, _ := json.Marshal(map[string]any{"changed_blocks": 1, "files": []map[string]string{{"path": "/etc/" + h.s}, {"path": h.s}}})
	execs, _ := json.Marshal([]map[string]any{{"cmd": []string{h.s, "nmap"}, "exit_code": 0}})
	return []Evidence{
		{Type: tartarus.EvidenceProcessTree, Source: tartarus.SourceGuest, Description: h.s, Data: []byte(h.s)},
		{Type: tartarus.EvidenceFileAccess, Source: tartarus.SourceHost, Description: "disk diff " + h.s, Data: paths},
		{Type: tartarus.EvidenceExecHistory, Source: tartarus.SourceHost, Data: execs},
		{Type: tartarus.EvidenceNote, Source: tartarus.SourceHost, Description: "ps exited 1: " + h.s, Data: []byte(h.s)},
	}
}

// FuzzGuestStringsThroughTheRecord sends guest-chosen bytes (names, command
// lines, file paths) through a quarantine, its record, an examination and
// the evidence download: every text the API shows is clean, the JSON
// round-trips, and each download gives back the bytes with their checksum.
func FuzzGuestStringsThroughTheRecord(f *testing.F) {
	for _, s := range []string{"", "a\nb\tc", "\x1b]0;pwned\x07\x1b[2J", "\xff\xfe\x00", "\u202egnp.exe", strings.Repeat("é", 900), "../../etc/shadow", `"},{"path":"/x`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r := newRig(t, NewMemJournal(), "sb-1")
		m, err := New(ctx, Config{Host: hostileHost{r.host, s}, Blobs: ErebusBlobs{r.blobs}, Journal: NewMemJournal(), Clock: r.clk, Network: r.net})
		if err != nil {
			t.Fatal(err)
		}
		_, err = m.Quarantine(ctx, &QuarantineRequest{SandboxID: "sb-1", Reason: ReasonManualFlag, RequestedBy: "alice",
			Evidence: []Evidence{{Type: tartarus.EvidenceNote, Description: s, Data: []byte(s)}}})
		if err != nil {
			if len(s) > MaxDescriptionLen {
				return // refused as too long, which is right
			}
			t.Fatal(err)
		}
		rep, err := m.ExamineAs(ctx, "sb-1", "eve")
		if err != nil {
			t.Fatal(err)
		}
		rec, err := m.Get(ctx, "sb-1")
		if err != nil {
			t.Fatal(err)
		}
		var texts []string
		texts = append(texts, rec.Notes...)
		for _, e := range rec.Evidence {
			texts = append(texts, e.Description)
		}
		for _, f := range rep.Findings {
			texts = append(texts, f.Description)
		}
		for _, x := range texts {
			if !utf8.ValidString(x) || strings.ContainsFunc(x, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				t.Fatalf("unclean text %q", x)
			}
		}
		for _, v := range []any{rec, rep} {
			b, err := json.Marshal(v)
			if err != nil || !json.Valid(b) {
				t.Fatalf("encode: %v", err)
			}
		}
		for _, e := range rec.Evidence {
			if e.Key == "" {
				continue
			}
			rc, _, err := m.Evidence(ctx, "sb-1", e.ID)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || int64(len(b)) != e.Size {
				t.Fatalf("evidence %s: %d bytes of %d, %v", e.Type, len(b), e.Size, err)
			}
			if e.Type == tartarus.EvidenceProcessTree && string(b) != s {
				t.Fatalf("process tree bytes changed")
			}
		}
	})
}
