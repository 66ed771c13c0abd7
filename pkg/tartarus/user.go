package tartarus

import "strings"

// MaxUserLen bounds an exec's user ("NAME", "UID", "NAME:GROUP" or
// "UID:GID").
const MaxUserLen = 65

// ValidUser checks the form of an exec's user: a user name or numeric id,
// optionally followed by ":" and a group name or numeric id. Names are
// letters, digits, '.', '_' and '-', not starting with '-'. Empty is
// valid (the sandbox's default). Whether the user exists is for the
// sandbox to say.
func ValidUser(u string) error {
	if u == "" {
		return nil
	}
	if len(u) > MaxUserLen {
		return Errorf(ErrInvalid, "user: at most %d bytes", MaxUserLen)
	}
	name, group, hasGroup := strings.Cut(u, ":")
	if !validUserPart(name) || (hasGroup && !validUserPart(group)) {
		return Errorf(ErrInvalid, "user %q: want NAME, UID, NAME:GROUP or UID:GID (letters, digits, '.', '_', '-')", u)
	}
	return nil
}

func validUserPart(s string) bool {
	if s == "" || s[0] == '-' {
		return false
	}
	for _, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return false
		}
	}
	return true
}
