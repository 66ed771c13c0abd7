package tartarus_test

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/tartarus-sandbox/tartarus/"

// TestLayers keeps the contract apart from the implementation: the Go SDK
// links only the contract and the standard library, and the HTTP layer
// links no store, runtime, node agent or snapshot code.
func TestLayers(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command to list dependencies")
	}
	for _, tt := range []struct {
		pkg     string
		allowed []string // the only Tartarus packages it may depend on
	}{
		{"pkg/client", []string{"pkg/tartarus", "pkg/tartarus/api"}},
		{"pkg/tartarus", nil},
		{"pkg/tartarus/api", []string{"pkg/tartarus"}},
		{"pkg/olympus", []string{"pkg/tartarus", "pkg/tartarus/api", "pkg/cerberus", "pkg/clock"}},
	} {
		out, err := exec.Command("go", "list", "-deps", module+tt.pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", tt.pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			if dep == module+tt.pkg {
				continue
			}
			if rel, ours := strings.CutPrefix(dep, module); ours && !contains(tt.allowed, rel) {
				t.Errorf("%s depends on %s; it may depend only on %v of Tartarus", tt.pkg, rel, tt.allowed)
			}
			if tt.pkg == "pkg/client" && strings.Contains(strings.SplitN(dep, "/", 2)[0], ".") && !strings.HasPrefix(dep, module) {
				t.Errorf("pkg/client depends on %s; the SDK links only the standard library besides the contract", dep)
			}
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
