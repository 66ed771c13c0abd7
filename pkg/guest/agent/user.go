package agent

import (
	"os/user"
	"strconv"
	"strings"
	"syscall"

	"github.com/tartarus-sandbox/tartarus/pkg/guest/proto"
)

// credential resolves an exec's user (NAME, UID, NAME:GROUP or UID:GID)
// against the guest's /etc/passwd and /etc/group, and returns the
// credential to run with (its supplementary groups included) and the
// user's home directory. A name that is not there is refused; a numeric
// uid that is not there runs with gid 0 and home "/", as container
// runtimes do. An empty user is nil: the agent's own (root).
func credential(spec string) (*syscall.Credential, string, error) {
	if spec == "" {
		return nil, "", nil
	}
	name, group, hasGroup := strings.Cut(spec, ":")
	var uid, gid uint32
	home := "/"
	var groups []uint32
	u, err := lookupUser(name)
	switch {
	case err == nil:
		if uid, err = parseID(u.Uid); err == nil {
			gid, err = parseID(u.Gid)
		}
		if err != nil {
			return nil, "", &proto.Error{Code: proto.CodeInvalid, Message: "user " + name + ": bad entry in /etc/passwd"}
		}
		home = u.HomeDir
		if ids, gerr := u.GroupIds(); gerr == nil {
			for _, g := range ids {
				if n, perr := strconv.ParseUint(g, 10, 32); perr == nil {
					groups = append(groups, uint32(n))
				}
			}
		}
	case isNumeric(name):
		n, perr := strconv.ParseUint(name, 10, 32)
		if perr != nil {
			return nil, "", &proto.Error{Code: proto.CodeInvalid, Message: "user " + name + ": uid out of range"}
		}
		uid = uint32(n)
	default:
		return nil, "", &proto.Error{Code: proto.CodeInvalid, Message: "user " + name + " is not in the sandbox's /etc/passwd"}
	}
	if hasGroup {
		g, err := lookupGroup(group)
		if err != nil {
			return nil, "", err
		}
		gid, groups = g, nil
	}
	if home == "" {
		home = "/"
	}
	return &syscall.Credential{Uid: uid, Gid: gid, Groups: groups}, home, nil
}

func lookupUser(name string) (*user.User, error) {
	if isNumeric(name) {
		return user.LookupId(name)
	}
	return user.Lookup(name)
}

func lookupGroup(name string) (uint32, error) {
	if isNumeric(name) {
		n, err := strconv.ParseUint(name, 10, 32)
		if err != nil {
			return 0, &proto.Error{Code: proto.CodeInvalid, Message: "group " + name + ": gid out of range"}
		}
		return uint32(n), nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, &proto.Error{Code: proto.CodeInvalid, Message: "group " + name + " is not in the sandbox's /etc/group"}
	}
	id, err := parseID(g.Gid)
	if err != nil {
		return 0, &proto.Error{Code: proto.CodeInvalid, Message: "group " + name + ": bad entry in /etc/group"}
	}
	return id, nil
}

func isNumeric(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func parseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err
}
