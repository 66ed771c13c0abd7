package tartarus

import (
	"errors"
	"strings"
	"testing"
)

func TestValidUser(t *testing.T) {
	tests := []struct {
		user string
		ok   bool
	}{
		{"", true},
		{"root", true},
		{"app", true},
		{"1000", true},
		{"1000:1000", true},
		{"app:staff", true},
		{"www-data", true},
		{"a.b_c", true},
		{":1000", false},
		{"app:", false},
		{"-app", false},
		{"a:b:c", false},
		{"app user", false},
		{"app\x00", false},
		{"../etc", false},
		{strings.Repeat("a", MaxUserLen+1), false},
	}
	for _, tt := range tests {
		err := ValidUser(tt.user)
		if (err == nil) != tt.ok {
			t.Errorf("ValidUser(%q) = %v, want ok %v", tt.user, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidUser(%q) = %v, not ErrInvalid", tt.user, err)
		}
	}
}
