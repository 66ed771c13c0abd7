package typhon

import (
	"encoding/json"
	"testing"
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
