package gvisor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Commands run as children of the sandbox's init, not of `runsc exec`.
//
// gVisor's restore kills every process descended from a `runsc exec`
// (runsc/boot/restore.go: "they cannot be properly restored"), so a
// background process started by an Exec would not survive hibernation.
// Instead, the init below reads spawn requests from a FIFO and starts each
// command itself; the `runsc exec` that serves the Exec call only runs a
// small shim that hands over the command and waits for its exit status.
// The command takes the shim's stdin, stdout and stderr directly, opened
// through /proc/<shim>/fd: no relay, and a checkpoint with such files open
// restores fine (the files are dead afterwards, as their caller is). After
// a restore the shims of commands that were running are gone, but every
// process the commands started lives on.
//
// Each command leads its own session (setsid, when the image has it), so
// a timeout or cancel kills its whole process group, and Signal reaches
// every command's group.

// spawnDir holds the FIFO and the per-command files, on the tmpfs the
// bundle mounts at /dev (it always exists, whatever the image has).
const spawnDir = "/dev/.tartarus"

// initScript is the sandbox's init: it serves spawn requests ("<path
// prefix> <shim pid>" a line) until SIGTERM. The FIFO is opened read-write
// so that it never reports end-of-file between requests. The status goes
// back through a FIFO the shim holds open, written read-write so that a
// shim that is gone (after a restore) blocks nothing. The init's own
// output goes nowhere: it is runsc's output file, on the host's disk. Forked twice: the
// init reaps the short-lived middle process at once and keeps no job table
// that grows with every command.
const initScript = `trap 'exit 0' TERM
exec >/dev/null 2>&1
mkdir -p ` + spawnDir + `/x && rm -f ` + spawnDir + `/spawn && mkfifo -m 600 ` + spawnDir + `/spawn || exit 1
exec 3<>` + spawnDir + `/spawn
s=
command -v setsid >/dev/null 2>&1 && s=setsid
while read -r d p <&3; do
	[ -f "$d.cmd" ] || continue
	( (
		trap : TERM INT HUP QUIT USR1 USR2
		$s sh -c 'exec </proc/$2/fd/6 >/proc/$2/fd/7 2>/proc/$2/fd/8; . "$1.cmd"' sh "$d" "$p"
		echo $? 1<>"$d.st"
		rm -f "$d.st" "$d.cmd" "$d.pid"
	) </dev/null >/dev/null 2>&1 & )
done`

// shimScript runs under `runsc exec`: $1 is the command's name, $2 the
// command script. It exits with the command's status (125 when the init
// could not take the command). The command opens the shim's stdio as fds
// 6, 7 and 8: while a shell waits in "read <&5" its fd 0 is the FIFO. Only
// mkfifo is a process of its own: each process costs milliseconds in gVisor.
const shimScript = `trap : TERM INT HUP QUIT USR1 USR2
d=` + spawnDir + `/x/$1
mkfifo "$d.st" && printf '%s\n' "$2" >"$d.cmd" || exit 125
exec 5<>"$d.st" 6<&0 7>&1 8>&2
if ! { [ -p ` + spawnDir + `/spawn ] && echo "$d $$" >` + spawnDir + `/spawn; }; then
	echo "tartarus: the sandbox's init does not take commands" >&2
	rm -f "$d.st" "$d.cmd"
	exit 125
fi
read -r s <&5
exit "$s"`

// commandScript is what the spawned shell sources: record the pid (the
// group to kill), change directory, and exec the command with its
// environment. Every word is single-quoted.
func commandScript(req *tartarus.ExecRequest, cwd string) string {
	var b strings.Builder
	b.WriteString("echo $$ >\"$1.pid\"\ncd -- ")
	b.WriteString(shellQuote(cwd))
	b.WriteString(" || exit 1\nexec ")
	if len(req.Env) > 0 {
		b.WriteString("env")
		for _, k := range slices.Sorted(maps.Keys(req.Env)) {
			b.WriteString(" " + shellQuote(k+"="+req.Env[k]))
		}
		b.WriteString(" ")
	}
	for i, a := range req.Cmd {
		if i > 0 {
			b.WriteString(" ")
		}
		b.WriteString(shellQuote(a))
	}
	b.WriteString("\n")
	return b.String()
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func newCommandName() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "c" + hex.EncodeToString(b[:])
}

// killSpawned kills the process group of the spawned command name, waiting
// a moment for it to have recorded its pid.
func (r *Runtime) killSpawned(m *meta, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	script := `read -r p <"` + spawnDir + `/x/$1.pid" 2>/dev/null && [ -n "$p" ] || exit 3
kill -s KILL -- -"$p" 2>/dev/null || kill -s KILL "$p"`
	for ctx.Err() == nil {
		res, err := r.runscExec(ctx, m, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", script, "sh", name}}, nil)
		if err != nil || res.ExitCode != 3 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.Log.Warn("exec: no pid to kill", "sandbox", m.ID, "command", name)
}

// signalScript sends $1 to the process group of every spawned command.
const signalScript = `for f in ` + spawnDir + `/x/*.pid; do
	[ -f "$f" ] || continue
	read -r p <"$f" && [ -n "$p" ] || continue
	kill -s "$1" -- -"$p" 2>/dev/null || kill -s "$1" "$p" 2>/dev/null
done
exit 0`

// waitInit waits until the sandbox's init serves spawn requests.
func (r *Runtime) waitInit(ctx context.Context, m *meta) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		res, err := r.runscExec(ctx, m, &tartarus.ExecRequest{Cmd: []string{"test", "-p", spawnDir + "/spawn"}}, nil)
		if err == nil && res.ExitCode == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sandbox %s: init did not come up: %w", m.ID, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}
