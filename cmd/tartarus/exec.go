package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/client/terminal"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

func newExecCmd(o *clientOptions) *cobra.Command {
	var (
		env      []string
		cwd      string
		timeout  int
		noStdin  bool
		tty      bool
		interact bool
		user     string
	)
	cmd := &cobra.Command{
		Use:   "exec [-it] ID -- CMD [ARG...]",
		Short: "Run a command in a sandbox, streaming its output; exit with its exit code",
		Long: `Run a command in a sandbox. Output streams as it is produced, and tartarus
exits with the command's exit code. Standard input is sent to the command
when it is not a terminal (up to 8 MiB; use "tartarus cp" for more).

With -t (usually -it), the command runs on a terminal in the sandbox, the
local terminal goes to raw mode and its size follows the window's; without a
command, a login shell.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if tty {
				envMap, err := parseKV("env", env)
				if err != nil {
					return err
				}
				c, err := o.client()
				if err != nil {
					return err
				}
				code, err := runPTY(cmd.Context(), c, args[0], &terminal.PTYOptions{Cmd: args[1:], Env: envMap, Cwd: cwd, User: user}, os.Stdin, cmd.OutOrStdout())
				if err != nil {
					return err
				}
				if code != 0 {
					return exitError{code: code}
				}
				return nil
			}
			if len(args) < 2 {
				return errors.New("exec: name a command after the sandbox id (or use -it for a shell)")
			}
			req := &api.ExecRequest{Cmd: args[1:], Cwd: cwd, User: user, TimeoutS: timeout}
			var err error
			if req.Env, err = parseKV("env", env); err != nil {
				return err
			}
			if !noStdin && !isTerminal(os.Stdin) {
				data, err := io.ReadAll(io.LimitReader(os.Stdin, olympus.MaxExecStdin+1))
				if err != nil {
					return fmt.Errorf("read stdin: %w", err)
				}
				if len(data) > olympus.MaxExecStdin {
					return fmt.Errorf("stdin is larger than %d MiB; copy it in with tartarus cp instead", olympus.MaxExecStdin>>20)
				}
				req.Stdin = string(data)
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			res, err := c.ExecStream(cmd.Context(), args[0], req, cmd.OutOrStdout(), cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if res.TimedOut {
				fmt.Fprintf(cmd.ErrOrStderr(), "tartarus: command timed out after %ds and was killed\n", timeout)
			}
			if res.ExitCode != 0 {
				return exitError{code: res.ExitCode}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&env, "env", nil, "KEY=VALUE for the command (repeatable)")
	f.StringVar(&cwd, "cwd", "", "working directory in the sandbox (default: the template's, else /)")
	f.StringVarP(&user, "user", "u", "", "run as this user of the sandbox: NAME, UID, NAME:GROUP or UID:GID (default: the template's, else root)")
	f.IntVar(&timeout, "timeout", 0, "kill the command after this many seconds (0: no limit)")
	f.BoolVar(&noStdin, "no-stdin", false, "do not send standard input")
	f.BoolVarP(&tty, "tty", "t", false, "run the command on a terminal (with -i: interactive)")
	f.BoolVarP(&interact, "interactive", "i", false, "send standard input (a terminal session always does)")
	return cmd
}

// isTerminal reports whether f is a character device (a terminal, or
// /dev/null, from which there is nothing to send either).
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err != nil || st.Mode()&os.ModeCharDevice != 0
}
