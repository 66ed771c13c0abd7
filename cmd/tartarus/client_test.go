package main

import (
	"reflect"
	"testing"
	"time"
)

func TestSplitRemote(t *testing.T) {
	tests := []struct {
		in       string
		id, path string
		ok       bool
	}{
		{"sb-1:/tmp/x", "sb-1", "/tmp/x", true},
		{"sb-1:/", "sb-1", "/", true},
		{"./file", "", "", false},
		{"/abs/file", "", "", false},
		{"dir/sb-1:/x", "", "", false}, // a local path with a colon
		{"sb-1:relative", "", "", false},
		{":/x", "", "", false},
		{"-", "", "", false},
		{"C:/windows", "C", "/windows", true}, // looks remote; ids are checked by the server
	}
	for _, tt := range tests {
		id, path, ok := splitRemote(tt.in)
		if id != tt.id || path != tt.path || ok != tt.ok {
			t.Errorf("splitRemote(%q) = %q %q %v, want %q %q %v", tt.in, id, path, ok, tt.id, tt.path, tt.ok)
		}
	}
}

func TestParseKV(t *testing.T) {
	tests := []struct {
		in      []string
		want    map[string]string
		wantErr bool
	}{
		{nil, nil, false},
		{[]string{"A=1", "B=x=y", "C="}, map[string]string{"A": "1", "B": "x=y", "C": ""}, false},
		{[]string{"A"}, nil, true},
		{[]string{"=v"}, nil, true},
	}
	for _, tt := range tests {
		got, err := parseKV("env", tt.in)
		if (err != nil) != tt.wantErr || !tt.wantErr && !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseKV(%q) = %v, %v", tt.in, got, err)
		}
	}
}

func TestHuman(t *testing.T) {
	for d, want := range map[int64]string{-5: "0s", 42: "42s", 600: "10m", 7200 + 60: "2h01m", 3 * 86400: "3d"} {
		if got := human(secs(d)); got != want {
			t.Errorf("human(%ds) = %q, want %q", d, got, want)
		}
	}
}

func secs(n int64) time.Duration { return time.Duration(n) * time.Second }
