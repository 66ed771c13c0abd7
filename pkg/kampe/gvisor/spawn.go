package gvisor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
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
// small shim that hands over the command and relays its stdio through
// FIFOs and its exit status through a file. After a restore the shims of
// commands that were running are gone (their callers are too), but every
// process the commands started lives on.
//
// Each command leads its own session (setsid, when the image has it), so
// a timeout or cancel kills its whole process group, and Signal reaches
// every command's group.

// spawnDir holds the FIFO and one directory per command, on the tmpfs the
// bundle mounts at /dev (it always exists, whatever the image has).
const spawnDir = "/dev/.tartarus"

// initScript is the sandbox's init: it serves spawn requests (a path
// prefix per line) until SIGTERM. The FIFO is opened read-write so that it
// never reports end-of-file between requests. The status goes back through
// a FIFO opened read-write too, so a shim that is gone (after a restore)
// blocks nothing.
const initScript = `trap 'exit 0' TERM
mkdir -p ` + spawnDir + `/x && rm -f ` + spawnDir + `/spawn && mkfifo -m 600 ` + spawnDir + `/spawn || exit 1
exec 3<>` + spawnDir + `/spawn
s=
command -v setsid >/dev/null 2>&1 && s=setsid
while read -r d <&3; do
	[ -f "$d.cmd" ] || continue
	# Forked twice: the init reaps the short-lived middle process at once
	# and keeps no job table that grows with every command.
	( (
		trap : TERM INT HUP QUIT USR1 USR2
		i=/dev/null
		[ -p "$d.in" ] && i="$d.in"
		$s sh -c 'exec <"$2" >"$1.out" 2>"$1.err"; . "$1.cmd"' sh "$d" "$i"
		echo $? 1<>"$d.st"
	) </dev/null >/dev/null 2>&1 & )
done`

// shimScript runs under `runsc exec`: $1 is the command's name, $2 the
// command script, $3 "1" when there is input to relay. It relays stdin,
// stdout and stderr through FIFOs and exits with the command's status (125
// when the init could not take the command). Only mkfifo, the cats and rm
// are processes of their own: each process costs milliseconds in gVisor.
const shimScript = `trap : TERM INT HUP QUIT USR1 USR2
d=` + spawnDir + `/x/$1
f="$d.out $d.err $d.st"
[ "$3" = 1 ] && f="$f $d.in"
mkfifo $f && printf '%s\n' "$2" >"$d.cmd" || exit 125
exec 5<>"$d.st"
cat "$d.out" & o=$!
cat "$d.err" >&2 & e=$!
i=
if [ "$3" = 1 ]; then
	exec 4<&0
	cat <&4 >"$d.in" 2>/dev/null & i=$!
fi
if ! { [ -p ` + spawnDir + `/spawn ] && echo "$d" >` + spawnDir + `/spawn; }; then
	echo "tartarus: the sandbox's init does not take commands" >&2
	kill $o $e $i 2>/dev/null
	rm -f $f "$d.cmd"
	exit 125
fi
read -r s <&5
# Normally the outputs end with the command. A background process that
# keeps them open gets one second after the command's exit, not forever.
(read -t 1 x <&5; kill $o $e) </dev/null >/dev/null 2>&1 & w=$!
wait $o $e
kill $w $i 2>/dev/null
rm -f $f "$d.cmd" "$d.pid"
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
		for _, k := range sortedKeys(req.Env) {
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

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	for i := 1; i < len(keys); i++ {
		for j := i; j > 0 && keys[j] < keys[j-1]; j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
	return keys
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
	r.log.Warn("exec: no pid to kill", "sandbox", m.ID, "command", name)
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
