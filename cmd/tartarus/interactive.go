package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/client/terminal"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// interactiveCmds are the verbs for terminals, background processes and
// watches.
func interactiveCmds(o *clientOptions) []*cobra.Command {
	return []*cobra.Command{newWatchCmd(o), newProcCmd(o)}
}

// runPTY runs a command on a terminal in the sandbox, with the local
// terminal in raw mode and its size followed (SIGWINCH).
func runPTY(ctx context.Context, c *client.Client, id string, opts *terminal.PTYOptions, stdin *os.File, stdout io.Writer) (int, error) {
	fd := int(stdin.Fd())
	local := term.IsTerminal(fd)
	if local {
		if w, h, err := term.GetSize(fd); err == nil {
			opts.Cols, opts.Rows = w, h
		}
	}
	if opts.Cols == 0 {
		opts.Cols, opts.Rows = 80, 24
	}
	if len(opts.Cmd) == 0 {
		opts.Cmd = []string{"/bin/sh", "-l"}
	}
	p, err := terminal.Open(ctx, c, id, opts)
	if err != nil {
		return 0, err
	}
	defer p.Close()
	if local {
		old, err := term.MakeRaw(fd)
		if err != nil {
			return 0, fmt.Errorf("raw mode: %w", err)
		}
		defer term.Restore(fd, old)
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				if w, h, err := term.GetSize(fd); err == nil {
					_ = p.Resize(w, h)
				}
			}
		}()
	}
	go func() {
		_, _ = io.Copy(p, stdin)
		if !local {
			_, _ = p.Write([]byte{4}) // piped input ended: ^D
		}
	}()
	if _, err := io.Copy(stdout, p); err != nil {
		return 0, err
	}
	code, ok := p.ExitCode()
	if !ok {
		return 0, errors.New("terminal session ended without an exit status")
	}
	return code, nil
}

func newWatchCmd(o *clientOptions) *cobra.Command {
	var recursive bool
	cmd := &cobra.Command{
		Use:   "watch ID:/dir",
		Short: "Print the changes below a directory of a sandbox as they happen",
		Long: `Watch a directory of a sandbox and print one line a change:
"create", "write", "remove", "rename" or "chmod" and the path relative to the
directory ("overflow" when changes came faster than they could be sent and
some were dropped). Runs until interrupted. With -o json, one JSON object a line.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, path, ok := splitRemote(args[0])
			if !ok {
				return fmt.Errorf("want ID:/path, got %q", args[0])
			}
			c, asJSON, err := o.jsonClient()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			out := cmd.OutOrStdout()
			err = c.Watch(ctx, id, path, recursive, func(l api.WatchLine) error {
				if asJSON {
					return printJSON(out, l)
				}
				if l.Type == api.WatchWatching {
					fmt.Fprintf(cmd.ErrOrStderr(), "watching %s\n", l.Name)
					return nil
				}
				suffix := ""
				if l.IsDir {
					suffix = "/"
				}
				_, err := fmt.Fprintf(out, "%-7s %s%s\n", l.Type, l.Name, suffix)
				return err
			})
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", true, "watch subdirectories too")
	o.addOutputFlag(cmd)
	return cmd
}

// processSelector reads a pid or a tag.
func processSelector(s string) tartarus.ProcessSelector {
	if n, err := strconv.Atoi(s); err == nil {
		return tartarus.ProcessSelector{Pid: n}
	}
	return tartarus.ProcessSelector{Tag: s}
}

func newProcCmd(o *clientOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "proc", Aliases: []string{"process", "processes"},
		Short: "Start, list, follow and signal background processes in a sandbox"}

	var (
		tag   string
		env   []string
		cwd   string
		user  string
		stdin bool
	)
	start := &cobra.Command{
		Use:   "start ID [--tag TAG] -- CMD [ARG...]",
		Short: "Start a command in the background; print its pid",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			envMap, err := parseKV("env", env)
			if err != nil {
				return err
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			p, err := c.StartProcess(cmd.Context(), args[0], &api.ProcessStart{Cmd: args[1:], Env: envMap, Cwd: cwd, User: user, Tag: tag, Stdin: stdin})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), p.Pid)
			return nil
		},
	}
	f := start.Flags()
	f.StringVar(&tag, "tag", "", "name the process for later calls (not a number)")
	f.StringArrayVar(&env, "env", nil, "KEY=VALUE for the command (repeatable)")
	f.StringVar(&cwd, "cwd", "", "working directory in the sandbox (default: the template's, else /)")
	f.StringVarP(&user, "user", "u", "", "run as this user of the sandbox: NAME, UID, NAME:GROUP or UID:GID (default: the template's, else root)")
	f.BoolVar(&stdin, "stdin", false, "keep its standard input open for \"proc input\"")

	ls := &cobra.Command{
		Use:   "ls ID",
		Short: "List the background processes of a sandbox",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(cmd, o, func(c *client.Client, ctx context.Context) ([]tartarus.Process, error) {
				return c.ListProcesses(ctx, args[0])
			}, func(w io.Writer, ps []tartarus.Process) error {
				tw := newTable(w)
				fmt.Fprintln(tw, "PID\tTAG\tSTATUS\tSTARTED\tCMD")
				for _, p := range ps {
					status := "running"
					if p.Exited {
						status = "exited " + strconv.Itoa(p.ExitCode)
					}
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s ago\t%s\n", p.Pid, orDash(p.Tag), status, human(time.Since(p.StartedAt)), strings.Join(p.Cmd, " "))
				}
				return tw.Flush()
			})
		},
	}
	o.addOutputFlag(ls)

	var replay bool
	attach := &cobra.Command{
		Use:   "attach ID PID|TAG",
		Short: "Follow a background process's output until it exits; exit with its exit code",
		Long: `Follow what a background process prints from now on (with --replay, its
recent output first) until it exits, then exit with its exit code.
Interrupting detaches and leaves the process running.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			res, err := c.AttachProcess(ctx, args[0], processSelector(args[1]), replay, cmd.OutOrStdout(), cmd.ErrOrStderr(), nil)
			if ctx.Err() != nil {
				return nil // detached
			}
			if err != nil {
				return err
			}
			if res.ExitCode != 0 {
				return exitError{code: res.ExitCode}
			}
			return nil
		},
	}
	attach.Flags().BoolVar(&replay, "replay", false, "print the process's recent output first")

	var closeIn bool
	input := &cobra.Command{
		Use:   "input ID PID|TAG",
		Short: "Send standard input to a background process (started with --stdin)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			var data []byte
			if !isTerminal(os.Stdin) {
				if data, err = io.ReadAll(io.LimitReader(os.Stdin, 1<<20+1)); err != nil {
					return err
				}
				if len(data) > 1<<20 {
					return errors.New("at most 1 MiB of input a call")
				}
			}
			return c.ProcessInput(cmd.Context(), args[0], processSelector(args[1]), data, closeIn)
		},
	}
	input.Flags().BoolVar(&closeIn, "close", false, "close the process's standard input afterwards")

	var sig string
	kill := &cobra.Command{
		Use:   "kill ID PID|TAG",
		Short: "Signal a background process's process group (SIGTERM unless --signal)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			return c.SignalProcess(cmd.Context(), args[0], processSelector(args[1]), sig)
		},
	}
	kill.Flags().StringVarP(&sig, "signal", "s", "SIGTERM", "signal name or number")

	cmd.AddCommand(start, ls, attach, input, kill)
	return cmd
}

func newSandboxTimeoutCmd(o *clientOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "timeout ID SECONDS",
		Short: "Make a sandbox expire SECONDS from now (0: never)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			secs, err := strconv.Atoi(args[1])
			if err != nil {
				return fmt.Errorf("seconds %q: want a whole number", args[1])
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			sb, err := c.SetTimeout(cmd.Context(), args[0], secs)
			if err != nil {
				return err
			}
			if sb.ExpiresAt.IsZero() {
				fmt.Fprintf(cmd.OutOrStdout(), "%s never expires\n", sb.ID)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "%s expires at %s\n", sb.ID, sb.ExpiresAt.Local().Format(time.RFC3339))
			}
			return nil
		},
	}
}

func newSandboxMetricsCmd(o *clientOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "metrics ID",
		Short: "Show a sandbox's CPU, memory and disk use over time",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(cmd, o, func(c *client.Client, ctx context.Context) ([]tartarus.MetricSample, error) {
				return c.Metrics(ctx, args[0])
			}, func(w io.Writer, ms []tartarus.MetricSample) error {
				tw := newTable(w)
				fmt.Fprintln(tw, "TIME\tCPU%\tMEMORY\tDISK")
				for _, m := range ms {
					fmt.Fprintf(tw, "%s\t%.1f\t%d/%d MiB\t%d/%d MiB\n", m.At.Local().Format(time.TimeOnly), m.CPUPercent,
						m.MemoryUsedMB, m.MemoryTotalMB, m.DiskUsedMB, m.DiskTotalMB)
				}
				return tw.Flush()
			})
		},
	}
	o.addOutputFlag(cmd)
	return cmd
}
