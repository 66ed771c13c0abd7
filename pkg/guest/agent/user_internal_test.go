package agent

import (
	"slices"
	"testing"
)

// The test host's own /etc/passwd: root is always there.
func TestCredential(t *testing.T) {
	tests := []struct {
		spec     string
		uid, gid uint32
		home     string
		wantErr  bool
		none     bool
	}{
		{spec: "", none: true},
		{spec: "root", uid: 0, gid: 0, home: "/root"},
		{spec: "0", uid: 0, gid: 0, home: "/root"},
		{spec: "root:50", uid: 0, gid: 50, home: "/root"},
		{spec: "4242", uid: 4242, gid: 0, home: "/"},
		{spec: "4242:4343", uid: 4242, gid: 4343, home: "/"},
		{spec: "no-such-user-here", wantErr: true},
		{spec: "root:no-such-group-here", wantErr: true},
		{spec: "99999999999", wantErr: true},
	}
	for _, tt := range tests {
		cred, home, err := credential(tt.spec)
		switch {
		case tt.wantErr:
			if err == nil {
				t.Errorf("credential(%q) = %+v, want an error", tt.spec, cred)
			}
		case err != nil:
			t.Errorf("credential(%q): %v", tt.spec, err)
		case tt.none:
			if cred != nil {
				t.Errorf("credential(%q) = %+v, want none", tt.spec, cred)
			}
		case cred == nil || cred.Uid != tt.uid || cred.Gid != tt.gid || home != tt.home:
			t.Errorf("credential(%q) = %+v %q, want %d:%d %q", tt.spec, cred, home, tt.uid, tt.gid, tt.home)
		case tt.spec == "root" && !slices.Contains(cred.Groups, 0):
			t.Errorf("credential(root) groups %v, want root's group", cred.Groups)
		}
	}
}
