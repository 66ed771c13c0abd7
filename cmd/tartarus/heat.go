package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// newHeatCmd is `tartarus heat` (metrics by heat) and `tartarus heat
// explain --template T`.
func newHeatCmd(o *clientOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use: "heat", Short: "Show sandboxes and admission queues by heat (cold, warm, hot, inferno)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, asJSON, err := o.jsonClient()
			if err != nil {
				return err
			}
			m, err := c.Heat(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), m)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "HEAT\tRUNNING\tQUEUED\tAVG WAIT\tP99 WAIT")
			for _, h := range []string{"cold", "warm", "hot", "inferno"} {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%.1fs\t%.1fs\n", h, m.ByHeat[h], m.QueueDepthByHeat[h], m.AvgWaitSByHeat[h], m.P99WaitSByHeat[h])
			}
			return tw.Flush()
		},
	}
	o.addOutputFlag(cmd)
	var template string
	explain := &cobra.Command{
		Use: "explain --template T", Short: "Say which heat and class a create of a template gets, and which rule chose them", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			asJSON, err := o.json()
			if err != nil {
				return err
			}
			if template == "" {
				return fmt.Errorf("--template is required")
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			e, err := c.ExplainHeat(cmd.Context(), template)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), e)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s (class %s, rule %s): %s\n", e.Heat, e.Class, e.Rule, e.Reason)
			return nil
		},
	}
	explain.Flags().StringVar(&template, "template", "", "template to explain")
	o.addOutputFlag(explain)
	classes := &cobra.Command{
		Use: "classes", Short: "List the resource classes", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, asJSON, err := o.jsonClient()
			if err != nil {
				return err
			}
			cs, err := c.Classes(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), cs)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "CLASS\tHEAT\tCPUS\tMEMORY\tGPUS\tMAX DURATION\tNET MBPS\tDISK IOPS\tDEFAULT")
			for _, k := range cs {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%dMiB\t%d\t%ds\t%d\t%d\t%v\n", k.Name, k.Heat, k.CPUCores, k.MemoryMB, k.GPUCount,
					k.MaxDurationS, k.NetworkMbps, k.DiskIOPS, k.Default)
			}
			return tw.Flush()
		},
	}
	o.addOutputFlag(classes)
	cmd.AddCommand(explain, classes)
	return cmd
}

// newPoolCmd is `tartarus pool create|ls|rm`.
func newPoolCmd(o *clientOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "pool", Short: "Define node pools that serve heat levels"}
	var (
		p        api.Pool
		selector []string
	)
	create := &cobra.Command{
		Use: "create NAME --heat H [--heat H] [--selector k=v]... [--min N] [--max N]", Short: "Create or replace a node pool", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if p.NodeSelector, err = parseKV("selector", selector); err != nil {
				return err
			}
			if p.NodeSelector == nil {
				p.NodeSelector = map[string]string{}
			}
			p.Name = args[0]
			c, err := o.client()
			if err != nil {
				return err
			}
			out, err := c.DefinePool(cmd.Context(), &p)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s (%d nodes now)\n", out.Name, out.CurrentNodes)
			return nil
		},
	}
	create.Flags().StringSliceVar(&p.Heats, "heat", nil, "heat level the pool serves (repeatable: cold, warm, hot, inferno)")
	create.Flags().StringArrayVar(&selector, "selector", nil, "KEY=VALUE label a node must carry (repeatable)")
	create.Flags().IntVar(&p.MinNodes, "min", 0, "nodes the pool should have (fewer is reported)")
	create.Flags().IntVar(&p.MaxNodes, "max", 0, "most nodes the pool takes (0: no cap)")
	ls := &cobra.Command{
		Use: "ls", Short: "List node pools", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, asJSON, err := o.jsonClient()
			if err != nil {
				return err
			}
			pools, err := c.Pools(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), pools)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "POOL\tHEATS\tSELECTOR\tNODES\tMIN\tMAX")
			for _, p := range pools {
				var sel []string
				for _, k := range slices.Sorted(maps.Keys(p.NodeSelector)) {
					sel = append(sel, k+"="+p.NodeSelector[k])
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\n", p.Name, strings.Join(p.Heats, ","), orDash(strings.Join(sel, ",")),
					p.CurrentNodes, p.MinNodes, p.MaxNodes)
			}
			return tw.Flush()
		},
	}
	o.addOutputFlag(ls)
	rm := &cobra.Command{
		Use: "rm NAME", Short: "Delete a node pool", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			if err := c.RemovePool(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), args[0])
			return nil
		},
	}
	cmd.AddCommand(create, ls, rm)
	return cmd
}

// waitQueued follows a queued create until it leaves its queue, telling
// the user its position on stderr.
func waitQueued(cmd *cobra.Command, c *client.Client, sb *tartarus.Sandbox) (*tartarus.Sandbox, error) {
	last := -1
	for sb.State == tartarus.StateQueued || sb.State == tartarus.StateCreating {
		if sb.Queue != nil && sb.Queue.Position != last {
			last = sb.Queue.Position
			fmt.Fprintf(cmd.ErrOrStderr(), "%s queued: %d in the %s queue\n", sb.ID, last, sb.Queue.Heat)
		}
		select {
		case <-cmd.Context().Done():
			return nil, cmd.Context().Err()
		case <-time.After(500 * time.Millisecond):
		}
		var err error
		if sb, err = c.GetSandbox(cmd.Context(), sb.ID); err != nil {
			return nil, err
		}
	}
	if sb.State == tartarus.StateFailed {
		return nil, fmt.Errorf("sandbox %s: %s", sb.ID, sb.Error)
	}
	return sb, nil
}
