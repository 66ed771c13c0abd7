package agent

import (
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/tartarus-sandbox/tartarus/pkg/guest/proto"
)

// command prepares req as an exec.Cmd the way exec does: the base
// environment under req.Env, the program found in the command's own PATH,
// the working directory checked, req.User's credential and HOME set. When
// the program cannot be found or run, it returns the shell's exit code and
// message instead (and a nil Cmd).
func command(req *proto.ExecRequest) (cmd *exec.Cmd, code int, msg string, err error) {
	cred, home, err := credential(req.User)
	if err != nil {
		return nil, 0, "", err
	}
	env := buildEnv(req.Env)
	if _, ok := req.Env["HOME"]; cred != nil && !ok {
		env = setEnv(env, "HOME", home)
	}
	pathEnv := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathEnv = v
		}
	}
	prog, code, lerr := lookPath(req.Cmd[0], pathEnv)
	if lerr != nil {
		return nil, code, "tartarus-guest: " + shellMessage(req.Cmd[0], lerr) + "\n", nil
	}
	cwd := req.Cwd
	if cwd == "" {
		cwd = "/"
	}
	if fi, err := os.Stat(cwd); err != nil {
		return nil, 0, "", err
	} else if !fi.IsDir() {
		return nil, 0, "", &proto.Error{Code: proto.CodeInvalid, Message: "cwd " + cwd + " is not a directory"}
	}
	// Callers add their own process attributes to SysProcAttr.
	return &exec.Cmd{Path: prog, Args: req.Cmd, Env: env, Dir: cwd, SysProcAttr: &syscall.SysProcAttr{Credential: cred}}, 0, "", nil
}

// setEnv replaces key's value in a sorted KEY=VALUE list.
func setEnv(env []string, key, value string) []string {
	for i, kv := range env {
		if strings.HasPrefix(kv, key+"=") {
			env[i] = key + "=" + value
			return env
		}
	}
	return append(env, key+"="+value)
}
