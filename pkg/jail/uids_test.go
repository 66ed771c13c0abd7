package jail

import (
	"errors"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestUIDAllocator(t *testing.T) {
	dir := t.TempDir()
	a, err := newUIDAllocator(dir, 5000, 3)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		op, id  string
		want    int
		wantErr error
	}{
		{"alloc", "a", 5000, nil},
		{"alloc", "b", 5001, nil},
		{"alloc", "a", 5000, nil}, // the same sandbox keeps its uid
		{"alloc", "c", 5002, nil},
		{"alloc", "d", 0, tartarus.ErrResourceExhausted},
		{"release", "b", 0, nil},
		{"restart", "", 0, nil}, // allocations come back from disk
		{"alloc", "a", 5000, nil},
		{"alloc", "d", 5001, nil}, // b's uid, reclaimed
	}
	for i, s := range steps {
		switch s.op {
		case "alloc":
			got, err := a.allocate(s.id)
			if !errors.Is(err, s.wantErr) || (s.wantErr == nil && err != nil) || got != s.want {
				t.Fatalf("step %d: allocate(%s) = %d, %v; want %d, %v", i, s.id, got, err, s.want, s.wantErr)
			}
		case "release":
			if err := a.release(s.id); err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
		case "restart":
			if a, err = newUIDAllocator(dir, 5000, 3); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{StateDir: "/x"}, true},
		{"no state dir", Config{}, false},
		{"system uids", Config{StateDir: "/x", UIDBase: 10, UIDCount: 5}, false},
		{"past 2^31", Config{StateDir: "/x", UIDBase: 1<<31 - 10, UIDCount: 20}, false},
		{"negative", Config{StateDir: "/x", Pids: -1}, false},
		{"dotdot parent", Config{StateDir: "/x", CgroupParent: "../escape"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, tartarus.ErrInvalid) {
				t.Fatalf("Validate() = %v, want ErrInvalid", err)
			}
		})
	}
}
