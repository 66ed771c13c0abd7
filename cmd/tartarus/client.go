package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/client/terminal"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// clientOptions are the flags every client verb shares.
type clientOptions struct {
	url, apiKey, dataDir, output string
}

// addClientCmds adds the client verbs: sandbox, exec, cp.
func addClientCmds(root *cobra.Command) {
	o := &clientOptions{}
	for _, cmd := range append([]*cobra.Command{newSandboxCmd(o), newExecCmd(o), newCpCmd(o), newNodeCmd(o)}, interactiveCmds(o)...) {
		pf := cmd.PersistentFlags()
		pf.StringVar(&o.url, "url", envOr("TARTARUS_URL", client.DefaultURL), "API URL ($TARTARUS_URL)")
		pf.StringVar(&o.apiKey, "api-key", "", "API key ($TARTARUS_API_KEY, else DATA/admin.key when readable)")
		pf.StringVar(&o.dataDir, "data-dir", envOr("TARTARUS_DATA_DIR", serverDataDir()), "where to look for admin.key")
		root.AddCommand(cmd)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// client makes the SDK client: the key comes from --api-key, then
// $TARTARUS_API_KEY, then the local server's admin.key when readable.
func (o *clientOptions) client() (*client.Client, error) {
	key := o.apiKey
	if key == "" {
		key = os.Getenv("TARTARUS_API_KEY")
	}
	if key == "" {
		if data, err := os.ReadFile(filepath.Join(o.dataDir, "admin.key")); err == nil {
			key = strings.TrimSpace(string(data))
		}
	}
	hc, err := cerbHTTPClient()
	if err != nil {
		return nil, err
	}
	return client.New(o.url, key, client.WithHTTPClient(hc))
}

func (o *clientOptions) addOutputFlag(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&o.output, "output", "o", "table", "output format: table or json")
}

func (o *clientOptions) json() (bool, error) {
	switch o.output {
	case "json":
		return true, nil
	case "table", "":
		return false, nil
	}
	return false, fmt.Errorf("--output %q: want table or json", o.output)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// parseKV reads K=V flags into a map.
func parseKV(flag string, kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--%s %q: want KEY=VALUE", flag, kv)
		}
		m[k] = v
	}
	return m, nil
}

func newSandboxCmd(o *clientOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "sandbox", Aliases: []string{"sandboxes", "sb"}, Short: "Create, list and manage sandboxes"}
	cmd.AddCommand(newSandboxCreateCmd(o), newSandboxLsCmd(o), newSandboxGetCmd(o), newSandboxRmCmd(o), newSandboxForkCmd(o),
		newSandboxTimeoutCmd(o), newSandboxMetricsCmd(o))
	for _, verb := range []struct {
		name, short string
		do          func(*client.Client, context.Context, string) (*tartarus.Sandbox, error)
	}{
		{"pause", "Freeze a sandbox (its memory stays)", (*client.Client).Pause},
		{"resume", "Continue a paused sandbox", (*client.Client).Resume},
		{"hibernate", "Snapshot a sandbox to disk and free its memory", (*client.Client).Hibernate},
		{"wake", "Bring a hibernated sandbox back", (*client.Client).Wake},
	} {
		cmd.AddCommand(&cobra.Command{
			Use: verb.name + " ID", Short: verb.short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := o.client()
				if err != nil {
					return err
				}
				sb, err := verb.do(c, cmd.Context(), args[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s", sb.ID, sb.State)
				if sb.State == tartarus.StateHibernated && sb.SnapshotBytes > 0 {
					fmt.Fprintf(cmd.OutOrStdout(), " (snapshot %s)", bytesHuman(sb.SnapshotBytes))
				}
				fmt.Fprintln(cmd.OutOrStdout())
				return nil
			},
		})
	}
	return cmd
}

func newSandboxForkCmd(o *clientOptions) *cobra.Command {
	var count int
	cmd := &cobra.Command{
		Use: "fork ID", Short: "Copy a running sandbox, files and processes included; print the copies' ids", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			asJSON, err := o.json()
			if err != nil {
				return err
			}
			if count < 1 || count > api.MaxForkCount {
				return fmt.Errorf("--count %d: want 1 to %d", count, api.MaxForkCount)
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			list, err := c.Fork(cmd.Context(), args[0], count)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), api.SandboxList{Sandboxes: list})
			}
			for _, sb := range list {
				fmt.Fprintln(cmd.OutOrStdout(), sb.ID)
			}
			return nil
		},
	}
	cmd.Flags().IntVarP(&count, "count", "n", 1, fmt.Sprintf("number of copies (1-%d)", api.MaxForkCount))
	o.addOutputFlag(cmd)
	return cmd
}

// bytesHuman prints a size in binary units.
func bytesHuman(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

func newSandboxCreateCmd(o *clientOptions) *cobra.Command {
	var (
		req       tartarus.CreateRequest
		env, meta []string
		labels    []string
	)
	cmd := &cobra.Command{
		Use: "create", Short: "Create a sandbox and print its id", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			asJSON, err := o.json()
			if err != nil {
				return err
			}
			if req.Env, err = parseKV("env", env); err != nil {
				return err
			}
			if req.Metadata, err = parseKV("metadata", meta); err != nil {
				return err
			}
			if req.NodeLabels, err = parseKV("node-label", labels); err != nil {
				return err
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			sb, err := c.CreateSandbox(cmd.Context(), &req)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), sb)
			}
			fmt.Fprintln(cmd.OutOrStdout(), sb.ID)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Template, "template", tartarus.DefaultTemplate, "template to boot")
	f.IntVar(&req.MemoryMB, "memory", tartarus.DefaultMemoryMB, "memory in MiB")
	f.IntVar(&req.CPUs, "cpus", tartarus.DefaultCPUs, "virtual CPUs")
	f.IntVar(&req.TimeoutS, "timeout", tartarus.DefaultTimeoutS, "seconds until the sandbox is destroyed")
	f.IntVar(&req.AutoHibernateS, "auto-hibernate", 0, "hibernate after this many idle seconds (0: the server's default)")
	f.StringVar(&req.Runtime, "runtime", "", "runtime (default: the server's first)")
	f.StringArrayVar(&env, "env", nil, "KEY=VALUE environment of every command (repeatable)")
	f.StringArrayVar(&meta, "metadata", nil, "KEY=VALUE metadata (repeatable)")
	f.StringArrayVar(&labels, "node-label", nil, "KEY=VALUE a cluster node must carry to run it (repeatable)")
	o.addOutputFlag(cmd)
	return cmd
}

func newNodeCmd(o *clientOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "node", Aliases: []string{"nodes"}, Short: "List the nodes that run sandboxes"}
	ls := &cobra.Command{
		Use: "ls", Aliases: []string{"list"}, Short: "List nodes: state, runtimes, labels, what their sandboxes hold", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			asJSON, err := o.json()
			if err != nil {
				return err
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			list, err := c.Nodes(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), list)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tRUNTIMES\tSANDBOXES\tCPUS\tMEMORY\tLABELS\tLAST SEEN")
			now := time.Now()
			for _, n := range list.Nodes {
				state, seen := n.State, "-"
				if state == "" {
					state = "up" // a single node: the server itself
				}
				if n.DownReason != "" {
					state += " (" + n.DownReason + ")"
				}
				if !n.LastSeen.IsZero() {
					seen = human(now.Sub(n.LastSeen)) + " ago"
				}
				var rts []string
				for _, fp := range n.Runtimes {
					rt := fp.Runtime
					if fp.Accel != "" {
						rt += "/" + fp.Accel
					}
					if !fp.Available {
						rt += "(unavailable)"
					}
					rts = append(rts, rt)
				}
				var labels []string
				for _, k := range slices.Sorted(maps.Keys(n.Labels)) {
					labels = append(labels, k+"="+n.Labels[k])
				}
				cpus, mem := "-", "-"
				if n.CPUs > 0 {
					cpus = fmt.Sprintf("%d/%d", n.UsedCPUs, n.CPUs)
					mem = fmt.Sprintf("%d/%dMiB", n.UsedMemoryMB, n.MemoryMB)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", n.Name, state, strings.Join(rts, ","), n.Sandboxes,
					cpus, mem, orDash(strings.Join(labels, ",")), seen)
			}
			return tw.Flush()
		},
	}
	o.addOutputFlag(ls)
	rm := &cobra.Command{
		Use: "rm NAME...", Short: "Forget nodes that went down for good (a cluster's; they must hold no live sandbox)", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			var errs []error
			for _, name := range args {
				if err := c.ForgetNode(cmd.Context(), name); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", name, err))
					continue
				}
				fmt.Fprintln(cmd.OutOrStdout(), name)
			}
			return errors.Join(errs...)
		},
	}
	cmd.AddCommand(ls, rm)
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newSandboxLsCmd(o *clientOptions) *cobra.Command {
	var all bool
	var metadata []string
	cmd := &cobra.Command{
		Use: "ls", Aliases: []string{"list"}, Short: "List sandboxes (live ones unless --all; --metadata k=v filters)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			asJSON, err := o.json()
			if err != nil {
				return err
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			match, err := parseKV("metadata", metadata)
			if err != nil {
				return err
			}
			var list []*tartarus.Sandbox
			if len(match) > 0 {
				list, err = c.ListSandboxesWithMetadata(cmd.Context(), match)
			} else {
				list, err = c.ListSandboxes(cmd.Context())
			}
			if err != nil {
				return err
			}
			if !all {
				live := list[:0]
				for _, sb := range list {
					if !sb.State.Final() {
						live = append(live, sb)
					}
				}
				list = live
			}
			if asJSON {
				if list == nil {
					list = []*tartarus.Sandbox{}
				}
				return printJSON(cmd.OutOrStdout(), api.SandboxList{Sandboxes: list})
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTEMPLATE\tRUNTIME\tSTATE\tCPUS\tMEMORY\tSNAPSHOT\tAGE\tEXPIRES IN")
			now := time.Now()
			for _, sb := range list {
				expires := "-"
				if !sb.State.Final() && !sb.ExpiresAt.IsZero() {
					expires = human(sb.ExpiresAt.Sub(now))
				}
				snap := "-"
				if sb.SnapshotBytes > 0 {
					snap = bytesHuman(sb.SnapshotBytes)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%dMiB\t%s\t%s\t%s\n", sb.ID, sb.Template, sb.Runtime, sb.State,
					sb.CPUs, sb.MemoryMB, snap, human(now.Sub(sb.CreatedAt)), expires)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "include terminated and failed sandboxes")
	cmd.Flags().StringArrayVar(&metadata, "metadata", nil, "only sandboxes whose metadata has KEY=VALUE (repeatable)")
	o.addOutputFlag(cmd)
	return cmd
}

// human rounds a duration for tables.
func human(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func newSandboxGetCmd(o *clientOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use: "get ID", Short: "Show one sandbox", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			asJSON, err := o.json()
			if err != nil {
				return err
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			sb, err := c.GetSandbox(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), sb)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			row := func(k string, v any) { fmt.Fprintf(tw, "%s:\t%v\n", k, v) }
			row("id", sb.ID)
			row("state", sb.State)
			row("template", sb.Template)
			row("runtime", sb.Runtime)
			row("node", sb.Node)
			row("cpus", sb.CPUs)
			row("memory", fmt.Sprintf("%d MiB", sb.MemoryMB))
			if sb.SnapshotBytes > 0 {
				row("snapshot", bytesHuman(sb.SnapshotBytes))
			}
			if sb.AutoHibernateS > 0 {
				row("auto hibernate", (time.Duration(sb.AutoHibernateS) * time.Second).String())
			}
			row("created", sb.CreatedAt.Local().Format(time.RFC3339))
			row("expires", sb.ExpiresAt.Local().Format(time.RFC3339))
			if !sb.LastActivityAt.IsZero() {
				row("last activity", sb.LastActivityAt.Local().Format(time.RFC3339))
			}
			for k, v := range sb.Metadata {
				row("metadata."+k, v)
			}
			if sb.Error != "" {
				row("error", sb.Error)
			}
			return tw.Flush()
		},
	}
	o.addOutputFlag(cmd)
	return cmd
}

func newSandboxRmCmd(o *clientOptions) *cobra.Command {
	return &cobra.Command{
		Use: "rm ID...", Aliases: []string{"delete", "destroy"}, Short: "Destroy sandboxes", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			var errs []error
			for _, id := range args {
				sb, err := c.DeleteSandbox(cmd.Context(), id)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", id, err))
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", sb.ID, sb.State)
			}
			return errors.Join(errs...)
		},
	}
}

func newExecCmd(o *clientOptions) *cobra.Command {
	var (
		env      []string
		cwd      string
		timeout  int
		noStdin  bool
		tty      bool
		interact bool
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
				code, err := runPTY(cmd.Context(), c, args[0], &terminal.PTYOptions{Cmd: args[1:], Env: envMap, Cwd: cwd}, os.Stdin, cmd.OutOrStdout())
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
			req := &api.ExecRequest{Cmd: args[1:], Cwd: cwd, TimeoutS: timeout}
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
	f.StringVar(&cwd, "cwd", "", "working directory in the sandbox (default /)")
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

func newCpCmd(o *clientOptions) *cobra.Command {
	var mode string
	cmd := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy a file into or out of a sandbox (LOCAL ID:/path or ID:/path LOCAL; - is stdin/stdout)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			srcID, srcPath, srcRemote := splitRemote(args[0])
			dstID, dstPath, dstRemote := splitRemote(args[1])
			switch {
			case srcRemote == dstRemote:
				return errors.New("cp: exactly one of SRC and DST must be ID:/path")
			case dstRemote:
				return cpIn(cmd.Context(), c, args[0], dstID, dstPath, mode)
			default:
				return cpOut(cmd.Context(), c, srcID, srcPath, args[1], cmd.OutOrStdout())
			}
		},
	}
	cmd.Flags().StringVar(&mode, "mode", "", "permission bits of the copied file, octal (default: the local file's)")
	return cmd
}

// splitRemote reads "ID:/path". Local paths never look like that: a
// sandbox id has no '/' and the path after ':' is absolute.
func splitRemote(s string) (id, path string, ok bool) {
	id, path, ok = strings.Cut(s, ":")
	if !ok || id == "" || !strings.HasPrefix(path, "/") || strings.Contains(id, "/") {
		return "", "", false
	}
	return id, path, true
}

func cpIn(ctx context.Context, c *client.Client, local, id, path, mode string) error {
	var r io.Reader = os.Stdin
	perm := os.FileMode(0o644)
	if local != "-" {
		f, err := os.Open(local)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		if st.IsDir() {
			return fmt.Errorf("cp: %s is a directory; copy files one by one (or tar them)", local)
		}
		perm = st.Mode().Perm()
		r = f
	}
	if mode != "" {
		var m uint32
		if _, err := fmt.Sscanf(mode, "%o", &m); err != nil || m > 0o7777 {
			return fmt.Errorf("--mode %q: want octal bits like 0644", mode)
		}
		perm = os.FileMode(m)
	}
	return c.WriteFile(ctx, id, path, perm, r)
}

func cpOut(ctx context.Context, c *client.Client, id, path, local string, stdout io.Writer) error {
	rc, err := c.ReadFile(ctx, id, path)
	if err != nil {
		return err
	}
	defer rc.Close()
	if local == "-" {
		_, err := io.Copy(stdout, rc)
		return err
	}
	if st, err := os.Stat(local); err == nil && st.IsDir() {
		local = filepath.Join(local, filepath.Base(path))
	}
	// Write beside the target and rename, so a cut transfer leaves no
	// half file under the wanted name.
	tmp, err := os.CreateTemp(filepath.Dir(local), "."+filepath.Base(local)+".part-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, rc); err != nil {
		tmp.Close()
		return fmt.Errorf("cp: download cut: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), local)
}
