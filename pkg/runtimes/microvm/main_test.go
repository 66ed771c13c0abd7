package microvm_test

import (
	"os"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/jail"
)

// TestMain lets this test binary be the jail's shim: a jailed QEMU starts
// as /proc/self/exe re-executed (see package jail).
func TestMain(m *testing.M) {
	jail.RunShimIfAsked(jailProbes)
	os.Exit(m.Run())
}
