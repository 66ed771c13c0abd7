package typhonnode

import "testing"

func TestLastScreen(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
		n              int
	}{
		{"last lines", "a\nb\nc\nd", "c\nd", 2},
		{"carriage return overwrites", "progress 10%\rprogress 99%\ndone", "progress 99%\ndone", 5},
		{"escapes and controls dropped", "\x1b[31mred\x1b[0m \x07bell\x00", "red bell", 5},
		{"crlf", "one\r\ntwo\r\n", "one\ntwo\n", 5},
		{"unterminated escape", "ok\x1b[12", "ok", 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(lastScreen([]byte(tc.in), tc.n)); got != tc.want {
				t.Fatalf("lastScreen(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestCapped(t *testing.T) {
	c := capped{limit: 4}
	n, err := c.Write([]byte("abcdef"))
	if n != 6 || err != nil || c.String() != "abcd" {
		t.Fatalf("%d %v %q", n, err, c.String())
	}
	c.Write([]byte("gh"))
	if c.String() != "abcd" {
		t.Fatalf("over the limit: %q", c.String())
	}
}
