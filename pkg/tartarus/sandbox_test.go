package tartarus

import (
	"reflect"
	"regexp"
	"testing"
	"time"
)

func TestNewSandbox(t *testing.T) {
	now := time.Date(2025, 5, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		req  CreateRequest
		want Sandbox
	}{{
		name: "everything",
		req: CreateRequest{Template: "python", Runtime: "gvisor", MemoryMB: 512, CPUs: 2, TimeoutS: 60,
			Env: map[string]string{"A": "1"}, Metadata: map[string]string{"k": "v"}, AutoHibernateS: 30},
		want: Sandbox{ID: "sb-1", Tenant: "acme", Template: "python", State: StateCreating, CPUs: 2, MemoryMB: 512,
			Env: map[string]string{"A": "1"}, Metadata: map[string]string{"k": "v"},
			CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(time.Minute), LastActivityAt: now, AutoHibernateS: 30},
	}, {
		name: "no metadata is an empty map",
		req:  CreateRequest{Template: "base", MemoryMB: 256, CPUs: 1, TimeoutS: 300},
		want: Sandbox{ID: "sb-1", Tenant: "acme", Template: "base", State: StateCreating, CPUs: 1, MemoryMB: 256,
			Metadata: map[string]string{}, CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(5 * time.Minute), LastActivityAt: now},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := NewSandbox("sb-1", "acme", &tt.req, now)
			if got.Metadata == nil {
				t.Fatal("Metadata is nil, want a map")
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("NewSandbox =\n%+v\nwant\n%+v", *got, tt.want)
			}
		})
	}
}

func TestNewID(t *testing.T) {
	for _, prefix := range []string{"sb-", "cmd-", "snap-", ""} {
		re := regexp.MustCompile("^" + regexp.QuoteMeta(prefix) + "[0-9a-f]{16}$")
		seen := map[string]bool{}
		for range 1000 {
			id := NewID(prefix)
			if !re.MatchString(id) {
				t.Fatalf("NewID(%q) = %q, want %s", prefix, id, re)
			}
			if seen[id] {
				t.Fatalf("NewID(%q) gave %q twice", prefix, id)
			}
			seen[id] = true
		}
		if prefix != "" && !ValidName(NewID(prefix)) {
			t.Errorf("NewID(%q) is not a ValidName", prefix)
		}
	}
}
