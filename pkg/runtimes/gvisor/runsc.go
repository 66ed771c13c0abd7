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
// that would never close.
func (r *Runtime) runscDetached(ctx context.Context, id string, args ...string) error {
	logPath := filepath.Join(r.sandboxDir(id), "console.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	start, _ := logf.Seek(0, io.SeekEnd)
	cmd := exec.CommandContext(ctx, r.opts.Runsc, append(r.globalFlags(), args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Run(); err != nil {
		b, _ := os.ReadFile(logPath)
		if int64(len(b)) >= start {
			b = b[start:]
		}
		return fmt.Errorf("runsc %s: %w: %s", args[0], err, lastLines(string(b)))
	}
	return nil
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
