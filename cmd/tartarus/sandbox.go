package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

func newSandboxCmd(o *clientOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "sandbox", Aliases: []string{"sandboxes", "sb"}, Short: "Create, list and manage sandboxes"}
	cmd.AddCommand(newSandboxCreateCmd(o), newSandboxLsCmd(o), newSandboxGetCmd(o), newSandboxRmCmd(o), newSandboxForkCmd(o), newSandboxSaveCmd(o), newSandboxTerminationCmd(o),
		newSandboxTimeoutCmd(o), newSandboxMetricsCmd(o), newSandboxNetworkCmd(o), newSandboxNetworkLogCmd(o), newSandboxPortTokenCmd(o), newSandboxQuarantineCmd(o))
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

func newSandboxCreateCmd(o *clientOptions) *cobra.Command {
	var (
		req       tartarus.CreateRequest
		env, meta []string
		labels    []string
		noWait    bool
		nf        networkFlags
	)
	cmd := &cobra.Command{
		Use: "create", Short: "Create a sandbox and print its id", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if req.Env, err = parseKV("env", env); err != nil {
				return err
			}
			if req.Metadata, err = parseKV("metadata", meta); err != nil {
				return err
			}
			if req.NodeLabels, err = parseKV("node-label", labels); err != nil {
				return err
			}
			if req.Network, err = nf.spec(); err != nil {
				return err
			}
			if req.FromCheckpoint != "" && !cmd.Flags().Changed("template") {
				req.Template = "" // the checkpoint's
			}
			// Unset sizes are the server's to choose: a heat class sizes
			// the sandbox only where the caller did not.
			for name, v := range map[string]*int{"memory": &req.MemoryMB, "cpus": &req.CPUs, "timeout": &req.TimeoutS} {
				if !cmd.Flags().Changed(name) {
					*v = 0
				}
			}
			return show(cmd, o, func(c *client.Client, ctx context.Context) (*tartarus.Sandbox, error) {
				sb, err := c.CreateSandbox(ctx, &req)
				if err == nil && sb.State == tartarus.StateQueued && !noWait {
					sb, err = waitQueued(cmd, c, sb)
				}
				return sb, err
			}, func(w io.Writer, sb *tartarus.Sandbox) error {
				_, err := fmt.Fprintln(w, sb.ID)
				return err
			})
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
	f.StringVar(&req.FromCheckpoint, "from-checkpoint", "", "create from a checkpoint (files and memory as they were; its template and shape)")
	f.StringVar(&req.HeatHint, "heat", "", "heat level: cold, warm, hot or inferno (its class sizes and limits the sandbox)")
	f.StringVar(&req.ResourceClass, "class", "", "resource class by name (tartarus heat classes)")
	f.IntVar(&req.MaxDurationS, "max-duration", 0, "seconds after which the sandbox is ended with reason timeout (within its class's maximum)")
	f.IntVar(&req.QueueTimeoutS, "queue-timeout", 0, "seconds to wait in the admission queue when the node is full (0: refuse at once)")
	f.BoolVar(&noWait, "no-wait", false, "with --queue-timeout: print the queued sandbox's id at once instead of waiting until it runs")
	nf.add(f, "network", "give the sandbox a network with this mode: none, open, restricted or monitored (default: the server's)")
	o.addOutputFlag(cmd)
	return cmd
}

func newSandboxLsCmd(o *clientOptions) *cobra.Command {
	var all bool
	var metadata []string
	cmd := &cobra.Command{
		Use: "ls", Aliases: []string{"list"}, Short: "List sandboxes (live ones unless --all; --metadata k=v filters)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			match, err := parseKV("metadata", metadata)
			if err != nil {
				return err
			}
			return show(cmd, o, func(c *client.Client, ctx context.Context) (api.SandboxList, error) {
				var list []*tartarus.Sandbox
				var err error
				if len(match) > 0 {
					list, err = c.ListSandboxesWithMetadata(ctx, match)
				} else {
					list, err = c.ListSandboxes(ctx)
				}
				live := []*tartarus.Sandbox{}
				for _, sb := range list {
					if all || !sb.State.Final() {
						live = append(live, sb)
					}
				}
				return api.SandboxList{Sandboxes: live}, err
			}, printSandboxes)
		},
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "include terminated and failed sandboxes")
	cmd.Flags().StringArrayVar(&metadata, "metadata", nil, "only sandboxes whose metadata has KEY=VALUE (repeatable)")
	o.addOutputFlag(cmd)
	return cmd
}

func printSandboxes(w io.Writer, list api.SandboxList) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "ID\tTEMPLATE\tRUNTIME\tSTATE\tCPUS\tMEMORY\tSNAPSHOT\tAGE\tEXPIRES IN")
	now := time.Now()
	for _, sb := range list.Sandboxes {
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
}

func newSandboxGetCmd(o *clientOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use: "get ID", Short: "Show one sandbox", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(cmd, o, func(c *client.Client, ctx context.Context) (*tartarus.Sandbox, error) {
				return c.GetSandbox(ctx, args[0])
			}, printSandbox)
		},
	}
	o.addOutputFlag(cmd)
	return cmd
}

func printSandbox(w io.Writer, sb *tartarus.Sandbox) error {
	tw := newTable(w)
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
}

func newSandboxRmCmd(o *clientOptions) *cobra.Command {
	var (
		grace      time.Duration
		signal     string
		checkpoint bool
		wait       bool
	)
	cmd := &cobra.Command{
		Use: "rm ID...", Aliases: []string{"delete", "destroy"}, Short: "Destroy sandboxes (at once, or gracefully with --grace)",
		Long: `Destroy sandboxes. Without flags a sandbox ends at once. With --grace its processes
get the signal (SIGTERM) and that long to finish, running execs and file transfers are
waited for, then SIGKILL; --checkpoint keeps a restorable checkpoint first
(tartarus sandbox create --from-checkpoint ID).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			graceful := cmd.Flags().Changed("grace") || cmd.Flags().Changed("signal") || checkpoint
			var errs []error
			for _, id := range args {
				if !graceful {
					sb, err := c.DeleteSandbox(cmd.Context(), id)
					if err != nil {
						errs = append(errs, fmt.Errorf("%s: %w", id, err))
						continue
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", sb.ID, sb.State)
					continue
				}
				st, err := c.TerminateSandbox(cmd.Context(), id, &tartarus.ShutdownOptions{
					GracePeriod: grace, Signal: tartarus.Signal(signal), CreateCheckpoint: checkpoint})
				for err == nil && wait && !st.Phase.Final() {
					time.Sleep(200 * time.Millisecond)
					st, err = c.Termination(cmd.Context(), id)
				}
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", id, err))
					continue
				}
				line := fmt.Sprintf("%s %s", id, st.Phase)
				if st.CheckpointID != "" {
					line += " checkpoint " + st.CheckpointID
				}
				if st.ErrorMessage != "" {
					line += ": " + st.ErrorMessage
				}
				fmt.Fprintln(cmd.OutOrStdout(), line)
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().DurationVar(&grace, "grace", 0, "time the sandbox's processes get between the signal and SIGKILL (up to 1h)")
	cmd.Flags().StringVar(&signal, "signal", "", "signal sent first: SIGTERM (default), SIGINT, SIGHUP, SIGQUIT or SIGKILL")
	cmd.Flags().BoolVar(&checkpoint, "checkpoint", false, "keep a restorable checkpoint (memory and disk) before the end")
	cmd.Flags().BoolVar(&wait, "wait", true, "with --grace or --checkpoint, wait until the termination is done")
	return cmd
}

func newSandboxForkCmd(o *clientOptions) *cobra.Command {
	var count int
	cmd := &cobra.Command{
		Use: "fork ID", Short: "Copy a running sandbox, files and processes included; print the copies' ids", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if count < 1 || count > api.MaxForkCount {
				return fmt.Errorf("--count %d: want 1 to %d", count, api.MaxForkCount)
			}
			return show(cmd, o, func(c *client.Client, ctx context.Context) (api.SandboxList, error) {
				list, err := c.Fork(ctx, args[0], count)
				return api.SandboxList{Sandboxes: list}, err
			}, func(w io.Writer, list api.SandboxList) error {
				for _, sb := range list.Sandboxes {
					fmt.Fprintln(w, sb.ID)
				}
				return nil
			})
		},
	}
	cmd.Flags().IntVarP(&count, "count", "n", 1, fmt.Sprintf("number of copies (1-%d)", api.MaxForkCount))
	o.addOutputFlag(cmd)
	return cmd
}
