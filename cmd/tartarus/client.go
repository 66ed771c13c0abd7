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
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// clientOptions are the flags every client verb shares.
type clientOptions struct {
	url, apiKey, dataDir, output string
}

// addClientCmds adds the client verbs: sandbox, exec, cp.
func addClientCmds(root *cobra.Command) {
	o := &clientOptions{}
	for _, cmd := range append([]*cobra.Command{newSandboxCmd(o), newExecCmd(o), newCpCmd(o), newNodeCmd(o), newCheckpointCmd(o),
		newHeatCmd(o), newPoolCmd(o), newSeasonCmd(o), newForecastCmd(o), newCapacityCmd(o), newQuarantineCmd(o)}, interactiveCmds(o)...) {
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

// show runs a client verb that fetches one thing and prints it: as JSON
// with -o json, else as table writes it. fetch takes the client first, so
// that a method expression like (*client.Client).Nodes serves.
func show[T any](cmd *cobra.Command, o *clientOptions, fetch func(c *client.Client, ctx context.Context) (T, error), table func(w io.Writer, v T) error) error {
	c, asJSON, err := o.jsonClient()
	if err != nil {
		return err
	}
	v, err := fetch(c, cmd.Context())
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(cmd.OutOrStdout(), v)
	}
	return table(cmd.OutOrStdout(), v)
}

// jsonClient reads the output flag (JSON or a table) and makes the API
// client: the start of every verb that prints what it got.
func (o *clientOptions) jsonClient() (*client.Client, bool, error) {
	asJSON, err := o.json()
	if err != nil {
		return nil, false, err
	}
	c, err := o.client()
	return c, asJSON, err
}

// newTable starts a table with the columns every verb uses.
func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

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

func newNodeCmd(o *clientOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "node", Aliases: []string{"nodes"}, Short: "List the nodes that run sandboxes"}
	ls := &cobra.Command{
		Use: "ls", Aliases: []string{"list"}, Short: "List nodes: state, runtimes, labels, what their sandboxes hold", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return show(cmd, o, (*client.Client).Nodes, printNodes)
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
	cmd.AddCommand(ls, rm, newNodeDrainCmd(o), newNodeUndrainCmd(o))
	return cmd
}

func printNodes(w io.Writer, list *api.NodeList) error {
	tw := newTable(w)
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
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
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
