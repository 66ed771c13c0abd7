package container

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestLookupUser(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n# comment\napp:x:1000:1000:app:/home/app:/bin/sh\nbad:x:nope:1:::\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\napp:x:1000:\nstaff:x:50:other,app\nwheel:x:10:other\n"), 0o644)
	tests := []struct {
		spec    string
		want    User
		wantErr bool
	}{
		{spec: "", want: User{UID: 0, GID: 0, Groups: []uint32{0}, Home: "/root"}},
		{spec: "root", want: User{UID: 0, GID: 0, Groups: []uint32{0}, Home: "/root"}},
		{spec: "app", want: User{UID: 1000, GID: 1000, Groups: []uint32{1000, 50}, Home: "/home/app"}},
		{spec: "1000", want: User{UID: 1000, GID: 1000, Groups: []uint32{1000, 50}, Home: "/home/app"}},
		{spec: "app:staff", want: User{UID: 1000, GID: 50, Groups: []uint32{50}, Home: "/home/app"}},
		{spec: "4242", want: User{UID: 4242, GID: 0, Groups: []uint32{0}, Home: "/"}},
		{spec: "4242:77", want: User{UID: 4242, GID: 77, Groups: []uint32{77}, Home: "/"}},
		{spec: "nosuch", wantErr: true},
		{spec: "app:nosuch", wantErr: true},
		{spec: "bad", wantErr: true},
	}
	for _, tt := range tests {
		got, err := LookupUser(root, tt.spec)
		if tt.wantErr {
			if err == nil || !errors.Is(err, tartarus.ErrInvalid) {
				t.Errorf("LookupUser(%q) = %+v, %v; want ErrInvalid", tt.spec, got, err)
			}
			continue
		}
		if err != nil || got.UID != tt.want.UID || got.GID != tt.want.GID || got.Home != tt.want.Home || !slices.Equal(got.Groups, tt.want.Groups) {
			t.Errorf("LookupUser(%q) = %+v, %v; want %+v", tt.spec, got, err, tt.want)
		}
	}
}

// A hostile tree: /etc/passwd a link to a host file, /etc/group a FIFO.
func TestLookupUserHostileTree(t *testing.T) {
	host := filepath.Join(t.TempDir(), "passwd")
	os.WriteFile(host, []byte("hostuser:x:77:77::/h:/bin/sh\n"), 0o644)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.Symlink(host, filepath.Join(root, "etc/passwd"))
	if u, err := LookupUser(root, "hostuser"); err == nil {
		t.Errorf("read a host file through a link: %+v", u)
	}
	os.Remove(filepath.Join(root, "etc/passwd"))
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("app:x:1000:1000::/home/app:/bin/sh\n"), 0o644)
	if err := syscall.Mkfifo(filepath.Join(root, "etc/group"), 0o644); err != nil {
		t.Fatal(err)
	}
	if u, err := LookupUser(root, "app"); err == nil {
		t.Errorf("read a FIFO: %+v", u)
	}
}
