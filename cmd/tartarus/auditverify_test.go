package main

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAuditVerifyCLI audits real requests through the server's auth setup,
// then edits and deletes lines of the log: `tartarus audit verify` reports
// each, and passes the untouched log.
func TestAuditVerifyCLI(t *testing.T) {
	_, dataDir, _ := authServer(t)
	key, err := os.ReadFile(filepath.Join(dataDir, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		req, _ := http.NewRequest("GET", os.Getenv("TARTARUS_URL")+"/v1/sandboxes", nil)
		if i%2 == 0 { // the others have no credentials: failure entries
			req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(key)))
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	dir := filepath.Join(dataDir, "audit")
	out, err := runCLI(t, "audit", "verify", "--dir", dir)
	if err != nil || !strings.Contains(out, "chain:     intact") || !strings.Contains(out, "seq 1..6") {
		b, _ := os.ReadFile(filepath.Join(dir, "audit.log"))
		t.Fatalf("untouched log: %v\n%s\n%s", err, out, b)
	}
	file := filepath.Join(dir, "audit.log")
	orig, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(orig, []byte("\n"))
	edited := bytes.Join(lines, nil)
	edited = bytes.Replace(edited, []byte(`"status":401`), []byte(`"status":200`), 1)
	deleted := bytes.Join(append(append([][]byte{}, lines[:2]...), lines[3:]...), nil)
	for name, content := range map[string][]byte{"edited": edited, "deleted": deleted} {
		if err := os.WriteFile(file, content, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := runCLI(t, "audit", "verify", "--dir", dir)
		if err == nil || !strings.Contains(err.Error(), "audit chain broken at audit.log line 3") {
			t.Errorf("%s line: %v\n%s", name, err, out)
		}
	}
}
