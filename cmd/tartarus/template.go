package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/images"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// newTemplateCmd builds and lists templates on this machine, without a server.
func newTemplateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "template",
		Short: "Build and list sandbox templates on this machine",
	}
	cmd.AddCommand(newTemplateBuildCmd(), newTemplateLsCmd(), newTemplatePublishCmd(true), newTemplatePublishCmd(false))
	return cmd
}

// newTemplatePublishCmd is `tartarus template publish|unpublish NAME`: an
// operator on the machine that holds the template opens a tenant's template
// (a migrated container) to every tenant, or closes it again.
func newTemplatePublishCmd(public bool) *cobra.Command {
	var dataDir string
	use, short := "publish NAME", "Let every tenant list and use a tenant's template"
	if !public {
		use, short = "unpublish NAME", "Make a published template its own tenant's again"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			img, err := images.Publish(dataDir, args[0], public)
			if err != nil {
				return err
			}
			state := "its tenant " + img.Tenant + " only"
			if img.Public {
				state = "every tenant"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "template %s (owner %s): usable by %s\n", img.Name, img.Tenant, state)
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", envOr("TARTARUS_DATA_DIR", templateDataDir()), "data directory")
	return cmd
}

// templateDataDir is /var/lib/tartarus for root and ~/.tartarus otherwise.
func templateDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/tartarus"
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ".tartarus"
	}
	return filepath.Join(home, ".tartarus")
}

func newTemplateBuildCmd() *cobra.Command {
	var (
		dataDir, agent string
		all            bool
	)
	cmd := &cobra.Command{
		Use:   "build [--all | NAME...]",
		Short: "Build templates (skips those whose inputs have not changed)",
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) > 0) {
				return fmt.Errorf("name the templates to build, or pass --all")
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			cat, err := images.Open(images.Options{DataDir: dataDir, GuestAgent: agent, Log: log})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			start := time.Now()
			stepStart := start
			err = cat.Build(cmd.Context(), args, func(p images.Progress) {
				switch {
				case p.Cached:
					fmt.Fprintf(out, "%-8s up to date\n", p.Template)
				case p.Done == p.Total:
					fmt.Fprintf(out, "%-8s built in %s\n", p.Template, time.Since(stepStart).Round(100*time.Millisecond))
				default:
					if p.Done == 0 {
						stepStart = time.Now()
					}
					fmt.Fprintf(out, "%-8s [%d/%d] %s\n", p.Template, p.Done+1, p.Total, p.Step)
				}
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "done in %s\n", time.Since(start).Round(100*time.Millisecond))
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", templateDataDir(), "data directory")
	cmd.Flags().StringVar(&agent, "guest-agent", "", "path of the tartarus-guest binary (default: next to this executable)")
	cmd.Flags().BoolVar(&all, "all", false, "build every known template")
	return cmd
}

func newTemplateLsCmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the templates built on this machine",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cat, err := images.Open(images.Options{DataDir: dataDir})
			if err != nil {
				return err
			}
			imgs, err := cat.List(cmd.Context())
			if err != nil {
				return err
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "NAME\tOWNER\tDIGEST\tSIZE\tBUILT\tDESCRIPTION")
			for _, img := range imgs {
				owner := "(built in)"
				if img.Tenant != "" {
					owner = img.Tenant
					if img.Public {
						owner += " (published)"
					}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%.1f MiB\t%s\t%s\n", img.Name, owner, shortDigest(img.Digest),
					float64(img.SizeBytes)/(1<<20), img.BuiltAt.Local().Format(time.DateTime), img.Description)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", templateDataDir(), "data directory")
	return cmd
}

// shortDigest shows the first 12 hex digits of a "sha256:…" digest.
func shortDigest(d string) string {
	const prefix = "sha256:"
	if len(d) > len(prefix)+12 {
		return d[len(prefix) : len(prefix)+12]
	}
	return d
}

// newSandboxSaveCmd is `tartarus sandbox save ID NAME`: a template of the
// sandbox's disk and memory, owned by its tenant.
func newSandboxSaveCmd(o *clientOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "save ID NAME",
		Short: "Save a running sandbox (files and processes) as a template of your tenant",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(cmd, o, func(c *client.Client, ctx context.Context) (*tartarus.Image, error) {
				return c.SaveTemplate(ctx, args[0], args[1])
			}, func(w io.Writer, img *tartarus.Image) error {
				_, err := fmt.Fprintf(w, "template %s saved (%.1f MiB)\n", img.Name, float64(img.SizeBytes)/(1<<20))
				return err
			})
		},
	}
	o.addOutputFlag(cmd)
	return cmd
}
