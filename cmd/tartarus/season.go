package main

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/persephone"
	"github.com/tartarus-sandbox/tartarus/pkg/persephone/persephonesrv"
)

// newSeasonCmd lists, defines, applies and unpins seasons.
func newSeasonCmd(o *clientOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "season", Short: "Seasons: scheduled floors and bounds for warm pools and capacity"}
	ls := &cobra.Command{
		Use: "ls", Aliases: []string{"list"}, Short: "List the seasons, the pinned one and the one in force", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, asJSON, err := o.jsonClient()
			if err != nil {
				return err
			}
			var list persephonesrv.SeasonList
			if err := c.Call(cmd.Context(), http.MethodGet, "/v1/seasons", nil, nil, &list); err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), &list)
			}
			return printSeasons(cmd, &list)
		},
	}
	o.addOutputFlag(ls)
	define := &cobra.Command{
		Use: "define FILE", Short: "Define (or replace) the seasons of a YAML file (docs/seasons.md)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			list, err := persephone.ParseSeasons(data)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			for _, s := range list {
				if err := c.Call(cmd.Context(), http.MethodPost, "/v1/seasons", nil, s, nil); err != nil {
					return fmt.Errorf("season %s: %w", s.ID, err)
				}
				fmt.Fprintln(cmd.OutOrStdout(), s.ID)
			}
			return nil
		},
	}
	apply := &cobra.Command{
		Use: "apply ID", Short: "Pin a season regardless of its schedule (until unpin)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			var list persephonesrv.SeasonList
			if err := c.Call(cmd.Context(), http.MethodPost, "/v1/seasons/"+url.PathEscape(args[0])+"/apply", nil, nil, &list); err != nil {
				return err
			}
			return printSeasons(cmd, &list)
		},
	}
	unpin := &cobra.Command{
		Use: "unpin", Short: "Clear the pinned season: schedules decide again", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			var list persephonesrv.SeasonList
			if err := c.Call(cmd.Context(), http.MethodDelete, "/v1/seasons/pin", nil, nil, &list); err != nil {
				return err
			}
			return printSeasons(cmd, &list)
		},
	}
	cmd.AddCommand(ls, define, apply, unpin)
	return cmd
}

func printSeasons(cmd *cobra.Command, list *persephonesrv.SeasonList) error {
	w := newTable(cmd.OutOrStdout())
	fmt.Fprintln(w, "ID\tPRIORITY\tSCHEDULE\tNODES\tPREWARM\tSTATUS")
	for _, s := range list.Seasons {
		sched := "manual"
		switch {
		case s.Schedule.StartCron != "":
			sched = fmt.Sprintf("%s → %s", s.Schedule.StartCron, s.Schedule.EndCron)
			if s.Schedule.Timezone != "" {
				sched += " " + s.Schedule.Timezone
			}
		case len(s.Schedule.TimeRanges) > 0:
			sched = fmt.Sprintf("%d time ranges", len(s.Schedule.TimeRanges))
		}
		prewarm := "-"
		if len(s.Prewarming.Templates) > 0 {
			prewarm = fmt.Sprintf("%s×%d (lead %s)", strings.Join(s.Prewarming.Templates, ","), s.Prewarming.PoolSize, s.Prewarming.LeadTime)
		}
		var status []string
		if s.ID == list.Pinned {
			status = append(status, "pinned")
		}
		if list.Current != nil && s.ID == list.Current.ID {
			status = append(status, "in force")
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%d-%d\t%s\t%s\n", s.ID, s.Priority, sched, s.MinNodes, s.MaxNodes, prewarm, strings.Join(status, ","))
	}
	return w.Flush()
}

// newForecastCmd shows forecasts, the backtest table and imports history.
func newForecastCmd(o *clientOptions) *cobra.Command {
	var window time.Duration
	var template string
	cmd := &cobra.Command{
		Use: "forecast", Short: "Forecast demand (or a template's launches) with prediction bounds", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, asJSON, err := o.jsonClient()
			if err != nil {
				return err
			}
			q := url.Values{"window": {window.String()}}
			if template != "" {
				q.Set("template", template)
			}
			var f persephone.Forecast
			if err := c.Call(cmd.Context(), http.MethodGet, "/v1/forecast", q, nil, &f); err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), &f)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s by %s, %s steps, %.0f%% bounds\n", f.Metric, f.Model, f.Step, f.Confidence*100)
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(w, "TIME\tLOWER\tPREDICTED\tUPPER\t")
			for _, p := range f.Predictions {
				fmt.Fprintf(w, "%s\t%d\t%d\t%d\t\n", p.Time.Local().Format("2006-01-02 15:04"), p.LowerBound, p.PredictedDemand, p.UpperBound)
			}
			return w.Flush()
		},
	}
	cmd.Flags().DurationVar(&window, "window", 48*time.Hour, "how far ahead")
	cmd.Flags().StringVar(&template, "template", "", "forecast this template's launches instead of demand")
	o.addOutputFlag(cmd)

	var metric string
	backtest := &cobra.Command{
		Use: "backtest", Short: "Score every model on the history (rolling origin: MASE, WAPE, under-provisioning); * marks the one in use", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, asJSON, err := o.jsonClient()
			if err != nil {
				return err
			}
			var ans persephonesrv.BacktestAnswer
			if err := c.Call(cmd.Context(), http.MethodGet, "/v1/forecast/backtest", url.Values{"metric": {metric}}, nil, &ans); err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), &ans)
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), ans.Table)
			return err
		},
	}
	backtest.Flags().StringVar(&metric, "metric", persephone.MetricDemand, "demand, active_vms, queue_depth, launches, errors, cpu_util, memory_util or launches:TEMPLATE")
	o.addOutputFlag(backtest)
	imp := &cobra.Command{
		Use: "import FILE.csv", Short: "Add usage history from a CSV file (format: docs/seasons.md)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			// Check locally first: a bad file is refused with its line
			// before anything is sent.
			if _, err := persephone.ReadUsageCSV(f); err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if _, err := f.Seek(0, 0); err != nil {
				return err
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			var ans persephonesrv.ImportAnswer
			if err := c.Upload(cmd.Context(), http.MethodPost, "/v1/usage/import", "text/csv", f, &ans); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "imported %d records\n", ans.Records)
			return nil
		},
	}
	pools := &cobra.Command{
		Use: "pools", Short: "Show the warm-pool targets of the last sizing, and on a cluster each agent's share", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, asJSON, err := o.jsonClient()
			if err != nil {
				return err
			}
			var ans persephonesrv.WarmPoolsAnswer
			if err := c.Call(cmd.Context(), http.MethodGet, "/v1/warm-pools", nil, nil, &ans); err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), &ans)
			}
			w := newTable(cmd.OutOrStdout())
			fmt.Fprintln(w, "TEMPLATE\tTARGET\tREADY\tREASON")
			for _, t := range ans.Targets {
				fmt.Fprintf(w, "%s\t%d\t%d\t%s\n", t.Template, t.Size, t.Current, t.Reason)
			}
			if len(ans.Nodes) > 0 {
				fmt.Fprintln(w, "\nTEMPLATE\tNODE\tTARGET\tREADY\tWARM CREATES\tCOLD CREATES")
				for _, n := range ans.Nodes {
					fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%d\n", n.Template, n.Node, n.Target, n.Ready, n.WarmCreates, n.ColdCreates)
				}
			}
			return w.Flush()
		},
	}
	o.addOutputFlag(pools)
	cmd.AddCommand(backtest, imp, pools)
	return cmd
}

// newCapacityCmd shows the recommended node count.
func newCapacityCmd(o *clientOptions) *cobra.Command {
	var util float64
	cmd := &cobra.Command{
		Use: "capacity", Short: "Recommend a node count from the forecast and the season in force", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, asJSON, err := o.jsonClient()
			if err != nil {
				return err
			}
			var q url.Values
			if util > 0 {
				q = url.Values{"target_util": {strconv.FormatFloat(util, 'f', -1, 64)}}
			}
			var rec persephone.CapacityRecommendation
			if err := c.Call(cmd.Context(), http.MethodGet, "/v1/capacity", q, nil, &rec); err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), &rec)
			}
			w := newTable(cmd.OutOrStdout())
			fmt.Fprintf(w, "current nodes\t%d\nrecommended nodes\t%d\ncost delta per hour\t%+.2f\nconfidence\t%.0f%%\n",
				rec.CurrentNodes, rec.RecommendedNodes, rec.CostDelta, rec.ConfidenceLevel*100)
			if rec.Season != "" {
				fmt.Fprintf(w, "season\t%s\n", rec.Season)
			}
			fmt.Fprintf(w, "reason\t%s\n", rec.Reason)
			return w.Flush()
		},
	}
	cmd.Flags().Float64Var(&util, "target-util", 0, "target utilization of the nodes, 0..1 (default: the season's)")
	o.addOutputFlag(cmd)
	return cmd
}
