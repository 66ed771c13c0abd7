package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// newSandboxTerminationCmd shows how a sandbox's termination went.
func newSandboxTerminationCmd(o *clientOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use: "termination ID", Short: "Show a sandbox's termination: its phases, deadline, exit code and checkpoint", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(cmd, o, func(c *client.Client, ctx context.Context) (*tartarus.TerminationStatus, error) {
				return c.Termination(ctx, args[0])
			}, printTermination)
		},
	}
	o.addOutputFlag(cmd)
	return cmd
}

func printTermination(out io.Writer, st *tartarus.TerminationStatus) error {
	w := newTable(out)
	fmt.Fprintf(w, "phase\t%s\nreason\t%s\nsignal\t%s\ndeadline\t%s\n", st.Phase, st.Reason, st.Signal, st.GraceDeadline.Format(time.RFC3339Nano))
	if st.ExitCode != nil {
		fmt.Fprintf(w, "exit code\t%d\n", *st.ExitCode)
	}
	if st.CheckpointID != "" {
		fmt.Fprintf(w, "checkpoint\t%s\n", st.CheckpointID)
	}
	if st.ErrorMessage != "" {
		fmt.Fprintf(w, "error\t%s\n", st.ErrorMessage)
	}
	for _, p := range st.Phases {
		fmt.Fprintf(w, "  %s\t%s\n", p.Phase, p.StartedAt.Format(time.RFC3339Nano))
	}
	return w.Flush()
}

// newCheckpointCmd lists checkpoints and takes one of a running sandbox.
func newCheckpointCmd(o *clientOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "checkpoint", Short: "Restorable checkpoints of sandboxes (create from one with sandbox create --from-checkpoint)"}
	ls := &cobra.Command{
		Use: "ls", Short: "List your checkpoints", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return show(cmd, o, (*client.Client).Checkpoints, func(out io.Writer, list []*tartarus.Checkpoint) error {
				w := newTable(out)
				fmt.Fprintln(w, "ID\tSANDBOX\tCREATED\tEXPIRES\tSIZE")
				for _, ck := range list {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%.1f MiB\n", ck.ID, ck.SandboxID, ck.CreatedAt.Format(time.RFC3339),
						ck.ExpiresAt.Format(time.RFC3339), float64(ck.Size)/(1<<20))
				}
				return w.Flush()
			})
		},
	}
	o.addOutputFlag(ls)
	take := &cobra.Command{
		Use: "create ID", Short: "Checkpoint a running sandbox (it goes on running); print the checkpoint's id", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			ck, err := c.Checkpoint(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), ck.ID)
			return nil
		},
	}
	cmd.AddCommand(ls, take)
	return cmd
}

// newNodeDrainCmd drains a node.
func newNodeDrainCmd(o *clientOptions) *cobra.Command {
	var (
		hibernate bool
		grace     time.Duration
	)
	cmd := &cobra.Command{
		Use: "drain NAME", Short: "Take a node out of placement and end its sandboxes (or hibernate and move them with --hibernate)",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(cmd, o, func(c *client.Client, ctx context.Context) (*tartarus.DrainReport, error) {
				return c.DrainNode(ctx, args[0], tartarus.DrainOptions{Hibernate: hibernate, GraceS: int(grace / time.Second)})
			}, func(out io.Writer, rep *tartarus.DrainReport) error {
				fmt.Fprintf(out, "node %s drained: %d ended, %d moved, %d failed\n", rep.Node, len(rep.Ended), len(rep.Moved), len(rep.Failed))
				for id, why := range rep.Failed {
					fmt.Fprintf(out, "  %s: %s\n", id, why)
				}
				if len(rep.Failed) > 0 {
					return fmt.Errorf("%d sandboxes were not drained", len(rep.Failed))
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&hibernate, "hibernate", false, "hibernate the sandboxes so they wake on another node (nodes sharing snapshots), instead of ending them")
	cmd.Flags().DurationVar(&grace, "grace", 0, "grace period of each sandbox's termination")
	o.addOutputFlag(cmd)
	return cmd
}

// newNodeUndrainCmd lets a drained node take sandboxes again.
func newNodeUndrainCmd(o *clientOptions) *cobra.Command {
	return &cobra.Command{
		Use: "undrain NAME", Short: "Let a drained node take sandboxes again", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			return c.UndrainNode(cmd.Context(), args[0])
		},
	}
}
