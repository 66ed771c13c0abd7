package container

import (
	"context"
	"io"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// CheckExec checks a command before it runs and returns its working
// directory ("/" when req names none).
func CheckExec(req *tartarus.ExecRequest) (cwd string, err error) {
	if len(req.Cmd) == 0 {
		return "", tartarus.Errorf(tartarus.ErrInvalid, "exec: empty command")
	}
	if err := tartarus.ValidEnv(req.Env); err != nil {
		return "", err
	}
	if req.Cwd == "" {
		return "/", nil
	}
	return req.Cwd, nil
}

// NumericUser turns an exec's user into the uid and gid to run with, for
// the runtimes that do not read the sandbox's /etc/passwd: "root", "UID"
// (gid 0) or "UID:GID". A name other than root is ErrNotImplemented;
// empty is root.
func NumericUser(runtime, u string) (uid, gid uint32, err error) {
	name, group, hasGroup := strings.Cut(u, ":")
	if name == "" || name == "root" {
		name = "0"
	}
	if !hasGroup || group == "root" {
		group = "0"
	}
	n, err1 := strconv.ParseUint(name, 10, 32)
	g, err2 := strconv.ParseUint(group, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, tartarus.Errorf(tartarus.ErrNotImplemented, "user %q: the %s runtime takes root, UID or UID:GID (it does not read the sandbox's /etc/passwd)", u, runtime)
	}
	return uint32(n), uint32(g), nil
}

// Wait waits for a command's end on done. When timeout (if above zero)
// passes first, it calls kill and still waits, reporting timedOut; when ctx
// ends first, it calls kill, waits, and returns ctx's error.
func Wait[T any](ctx context.Context, timeout time.Duration, done <-chan T, kill func()) (v T, timedOut bool, err error) {
	var expired <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}
	select {
	case v = <-done:
		return v, false, nil
	case <-expired:
		kill()
		return <-done, true, nil
	case <-ctx.Done():
		kill()
		<-done
		return v, false, ctx.Err()
	}
}

// ExitResult is the result of a command that exited with code after took.
// A command that timed out was killed with SIGKILL, whatever its code says;
// a code above 128 means the signal 128 below it ended the command.
func ExitResult(code int, timedOut bool, took time.Duration) *tartarus.ExecResult {
	res := &tartarus.ExecResult{ExitCode: code, TimedOut: timedOut, Duration: took}
	if timedOut {
		res.ExitCode = 128 + int(syscall.SIGKILL)
	}
	if res.ExitCode > 128 {
		res.Signal = syscall.Signal(res.ExitCode - 128).String()
	}
	return res
}

// OrDiscard returns w, or io.Discard when w is nil.
func OrDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// RequireRunning returns nil when state, as the backend reports it, is
// "running"; otherwise ErrFailedPrecondition saying what sandbox id is.
func RequireRunning(id, state string) error {
	switch state {
	case "running":
		return nil
	case "paused":
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is paused", id)
	}
	return tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s", id, StateName(state))
}

// StateName is state for a person: "not started" when the backend has no
// state for the sandbox.
func StateName(state string) string {
	if state == "" {
		return "not started"
	}
	return state
}

// ImageRef is the image name a template is imported under by the drivers
// that import templates as images: tartarus-template/<name>:<digest>.
func ImageRef(img *tartarus.Image) (string, error) {
	key, err := ImageKey(img)
	if err != nil {
		return "", err
	}
	return "tartarus-template/" + img.Name + ":" + strings.TrimPrefix(key, img.Name+"-"), nil
}

// BaseEnv is the environment of sandbox id's init: PATH, HOME and HOSTNAME,
// then the sandbox's own variables.
func BaseEnv(id string, env map[string]string) []string {
	return EnvList([]string{DefaultPath, "HOME=/root", "HOSTNAME=" + id}, env)
}
