package fake

import (
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/runtime/runtimetest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestConformance(t *testing.T) {
	tests := []struct {
		name string
		caps *tartarus.Capabilities
	}{
		{"all capabilities", nil},
		{"no optional capabilities", &tartarus.Capabilities{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			img := &tartarus.Image{Name: "base"}
			runtimetest.Run(t, func(t *testing.T) (tartarus.Runtime, *tartarus.Image) {
				rt, err := New(Config{StateDir: dir, Capabilities: tt.caps})
				if err != nil {
					t.Fatal(err)
				}
				return rt, img
			})
		})
	}
}
