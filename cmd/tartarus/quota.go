package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/olympus"
)

// newQuotaCmd is `tartarus quota`: the caller's tenant's quotas (from the
// server's policy file) and what it holds now.
func newQuotaCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "quota",
		Short: "Show your tenant's quotas and what it uses of them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var rep olympus.QuotaReport
			if err := cerbCall(cmd.Context(), "GET", "/v1/quotas", nil, &rep); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				b, _ := json.MarshalIndent(rep, "", "  ")
				fmt.Fprintln(out, string(b))
				return nil
			}
			limit := func(n int64) string {
				if n == 0 {
					return "-"
				}
				return fmt.Sprint(n)
			}
			l, u := rep.Limits, rep.Usage
			tw := newTable(out)
			fmt.Fprintf(tw, "tenant %s\t\t\n", rep.Tenant)
			fmt.Fprintln(tw, "QUOTA\tUSED\tLIMIT")
			for _, row := range []struct {
				name        string
				used, limit int64
			}{
				{"running_sandboxes", int64(u.RunningSandboxes), int64(l.RunningSandboxes)},
				{"vcpus", int64(u.VCPUs), int64(l.VCPUs)},
				{"memory_mb", int64(u.MemoryMB), int64(l.MemoryMB)},
				{"snapshot_bytes", u.SnapshotBytes, l.SnapshotBytes},
				{"concurrent_execs", int64(u.ConcurrentExecs), int64(l.ConcurrentExecs)},
				{"creates_per_minute", int64(u.CreatesPerMinute), int64(l.CreatesPerMinute)},
				{"max_lifetime_s", 0, int64(l.MaxLifetimeS)},
			} {
				used := fmt.Sprint(row.used)
				if row.name == "max_lifetime_s" {
					used = ""
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", row.name, used, limit(row.limit))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}
