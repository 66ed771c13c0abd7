package jail

import (
	"errors"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestSpecValidate(t *testing.T) {
	ok := Spec{ID: "sb-1", Root: "/state/sb-1/root", Path: "/usr/bin/qemu-system-x86_64", CPUs: 1, MemoryMB: 256}
	tests := []struct {
		name   string
		change func(*Spec)
		ok     bool
	}{
		{"valid", func(*Spec) {}, true},
		{"probe instead of a program", func(s *Spec) { s.Path, s.Probe = "", "walls" }, true},
		{"id with a slash", func(s *Spec) { s.ID = "../x" }, false},
		{"id dot-dot", func(s *Spec) { s.ID = ".." }, false},
		{"relative root", func(s *Spec) { s.Root = "root" }, false},
		{"no program", func(s *Spec) { s.Path = "" }, false},
		{"no cpus", func(s *Spec) { s.CPUs = 0 }, false},
		{"relative bind", func(s *Spec) { s.Binds = []Bind{{Source: "disk"}} }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := ok
			tt.change(&s)
			err := s.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, tartarus.ErrInvalid) {
				t.Fatalf("Validate() = %v, want ErrInvalid", err)
			}
		})
	}
}
