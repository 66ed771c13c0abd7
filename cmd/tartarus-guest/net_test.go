//go:build linux

package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseNet(t *testing.T) {
	tests := []struct {
		in      string
		want    netConfig
		wantErr string
	}{
		{in: "172.29.0.2/30,172.29.0.1,172.29.0.1", want: netConfig{
			Addr: netip.MustParsePrefix("172.29.0.2/30"), Gateway: netip.MustParseAddr("172.29.0.1"), DNS: netip.MustParseAddr("172.29.0.1")}},
		{in: "10.0.0.5/24,10.0.0.1", want: netConfig{Addr: netip.MustParsePrefix("10.0.0.5/24"), Gateway: netip.MustParseAddr("10.0.0.1")}},
		{in: "", wantErr: "want ADDR/BITS"},
		{in: "172.29.0.2,172.29.0.1", wantErr: "address"},
		{in: "172.29.0.2/30,10.0.0.1", wantErr: "gateway"},
		{in: "172.29.0.2/30,172.29.0.1,x", wantErr: "resolver"},
		{in: "fd00::2/64,fd00::1", wantErr: "address"},
		{in: "a,b,c,d", wantErr: "want ADDR/BITS"},
	}
	for _, tc := range tests {
		got, err := parseNet(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseNet(%q) = %+v, %v; want error with %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseNet(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	c := parseCmdline("tartarus.net=172.29.0.2/30,172.29.0.1")
	if c.Net == nil || c.NetErr != nil {
		t.Errorf("parseCmdline with tartarus.net: %+v", c)
	}
	if c := parseCmdline("tartarus.net=bogus"); c.Net != nil || c.NetErr == nil {
		t.Errorf("parseCmdline with a bad tartarus.net: %+v", c)
	}
}

func TestWriteResolvConf(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "resolv.conf")
	// systemd-resolved's symlink is replaced by a file.
	if err := os.Symlink("/run/systemd/resolve/stub-resolv.conf", p); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second run finds it already right
		if err := writeResolvConf(p, netip.MustParseAddr("172.29.0.1")); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(p)
	if err != nil || !strings.Contains(string(b), "nameserver 172.29.0.1\n") {
		t.Fatalf("resolv.conf = %q, %v", b, err)
	}
}
