package gvisor

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// runscDetached runs a runsc command that leaves a sandbox behind (run or
// restore with --detach). The sandbox inherits the command's stdout and
// stderr, so they go to a file in the sandbox's directory, not to a pipe
// that would never close. Once the sandbox runs the file is cut to
// nothing: what the sandbox writes later is not kept (the init's own
// output goes to /dev/null, spawn.go), and the file stays small.
func (r *Runtime) runscDetached(ctx context.Context, id string, args ...string) error {
	logPath := filepath.Join(r.sandboxDir(id), "console.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	flags := r.globalFlags()
	if r.nets.Has(id) {
		// gVisor's own network stack, over the guest namespace's device.
		flags = append(flags[:len(flags):len(flags)], "--network=sandbox")
	}
	cmd := exec.CommandContext(ctx, r.opts.Runsc, append(flags, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("runsc %s: %w: %s", args[0], err, lastLines(readTail(logPath, 16<<10)))
	}
	_ = logf.Truncate(0)
	return nil
}

// readTail returns at most the last n bytes of the file at path.
func readTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		_, _ = f.Seek(-n, io.SeekEnd)
	}
	b, _ := io.ReadAll(io.LimitReader(f, n))
	return string(b)
}

// runsc runs one runsc command and returns its stdout.
func (r *Runtime) runsc(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, r.opts.Runsc, append(r.globalFlags(), args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("runsc %s: %w: %s", args[0], err, lastLines(stderr.String()))
	}
	return out, nil
}

func (r *Runtime) globalFlags() []string {
	return []string{
		"--root=" + filepath.Join(r.opts.StateDir, "runsc"),
		"--platform=" + r.opts.Platform,
		// No network unless the sandbox has one (runscDetached): a
		// later flag wins.
		"--network=none",
		// Writes go to memory inside the sandbox: the template stays
		// read-only and shared, and a checkpoint carries the files.
		"--overlay2=root:memory",
	}
}

func lastLines(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 && len(s) > 300 {
		return s[i+1:]
	}
	return s
}

// state is runsc's view of one container.
type state struct {
	ID     string `json:"id"`
	Pid    int    `json:"pid"`
	Status string `json:"status"`
}

// states returns runsc's containers by id.
func (r *Runtime) states(ctx context.Context) (map[string]state, error) {
	out, err := r.runsc(ctx, "list", "--format=json")
	if err != nil {
		return nil, err
	}
	var list []state
	if len(bytes.TrimSpace(out)) > 0 && string(bytes.TrimSpace(out)) != "null" {
		if err := json.Unmarshal(out, &list); err != nil {
			return nil, fmt.Errorf("runsc list: %w", err)
		}
	}
	m := map[string]state{}
	for _, s := range list {
		m[s.ID] = s
	}
	return m, nil
}

// status returns the container's runsc status, or "" when runsc has none.
func (r *Runtime) status(ctx context.Context, id string) (string, error) {
	all, err := r.states(ctx)
	if err != nil {
		return "", err
	}
	return all[id].Status, nil
}
