package hecatoncheir

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/fake"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// A create asking for a network its runtime cannot give is refused as not
// implemented (501), with the reason, and leaves no sandbox.
func TestCreateNetworkUnsupported(t *testing.T) {
	e := newEnv(t, fake.Config{MaxCPUs: 2, MaxMemoryMB: 1024})
	_, err := e.agent.Create(context.Background(), "acme", &tartarus.CreateRequest{TimeoutS: 60,
		Network: &tartarus.NetworkSpec{Mode: tartarus.NetworkRestricted, Allow: []string{"example.com"}}})
	if !errors.Is(err, tartarus.ErrNotImplemented) || !strings.Contains(err.Error(), "cannot give a sandbox a network") {
		t.Fatalf("create with a network on the fake runtime: %v, want ErrNotImplemented with the reason", err)
	}
	if got := e.instances(t); len(got) != 0 {
		t.Errorf("instances after a refused create: %v", got)
	}
}
