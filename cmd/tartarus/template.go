package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/images"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/templates"
)

// newTemplateCmd builds and lists templates on this machine, without a server.
func newTemplateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "template",
		Short: "Build and list sandbox templates on this machine",
	}
	cmd.AddCommand(newTemplateBuildCmd(), newTemplateLsCmd(), newTemplatePublishCmd(true), newTemplatePublishCmd(false), newTemplateRmCmd(), newTemplateImportCmd())
	return cmd
}

// addServerFlags gives a template verb that talks to the server the
// client verbs' --url and --api-key.
func addServerFlags(cmd *cobra.Command, o *clientOptions) {
	cmd.Flags().StringVar(&o.url, "url", envOr("TARTARUS_URL", client.DefaultURL), "API URL ($TARTARUS_URL), for Dockerfile builds")
	cmd.Flags().StringVar(&o.apiKey, "api-key", "", "API key ($TARTARUS_API_KEY, else DATA/admin.key when readable)")
}

// newTemplateRmCmd is `tartarus template rm NAME`: delete one of your
// tenant's templates (refused while sandboxes use it).
func newTemplateRmCmd() *cobra.Command {
	o := &clientOptions{}
	cmd := &cobra.Command{
		Use:   "rm NAME",
		Short: "Delete one of your tenant's templates (refused while sandboxes use it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			if err := c.DeleteTemplate(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "template %s deleted\n", args[0])
			return nil
		},
	}
	addServerFlags(cmd, o)
	cmd.Flags().StringVar(&o.dataDir, "data-dir", envOr("TARTARUS_DATA_DIR", serverDataDir()), "where to look for admin.key")
	return cmd
}

// dockerBuild is `tartarus template build NAME -f Dockerfile [CONTEXT]`:
// the context goes to the server as a tar stream, which builds it in
// sandboxes; each step and its output are printed as they come.
type dockerBuild struct {
	o                clientOptions
	file             string
	buildArgs, allow []string
	memory, cpus     int
	timeout          time.Duration
	network          string
}

func (b *dockerBuild) run(cmd *cobra.Command, args []string) error {
	if len(args) < 1 || len(args) > 2 {
		return fmt.Errorf("with -f: tartarus template build NAME -f Dockerfile [CONTEXT]")
	}
	name, dir := args[0], "."
	if len(args) == 2 {
		dir = args[1]
	}
	var ig *templates.Ignore
	if f, err := os.Open(filepath.Join(dir, ".dockerignore")); err == nil {
		ig, err = templates.ParseIgnore(f)
		f.Close()
		if err != nil {
			return err
		}
	}
	// The Dockerfile travels inside the context: where it already is, or
	// under a reserved name.
	q := url.Values{"name": {name}}
	extra := ""
	if rel, err := filepath.Rel(dir, b.file); err == nil && filepath.IsLocal(rel) && (ig == nil || !ig.Excluded(filepath.ToSlash(rel))) {
		q.Set("dockerfile", filepath.ToSlash(rel))
	} else {
		extra = b.file
		q.Set("dockerfile", templates.DockerfileInContext)
	}
	if _, err := os.Stat(b.file); err != nil {
		return err
	}
	for _, a := range b.buildArgs {
		q.Add("build_arg", a)
	}
	if b.memory > 0 {
		q.Set("memory_mb", strconv.Itoa(b.memory))
	}
	if b.cpus > 0 {
		q.Set("cpus", strconv.Itoa(b.cpus))
	}
	if b.timeout > 0 {
		q.Set("timeout_s", strconv.Itoa(int(b.timeout.Seconds())))
	}
	if b.network != "" {
		q.Set("network", b.network)
		q["allow"] = b.allow
	}
	tarFile, err := os.CreateTemp("", "tartarus-context-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(tarFile.Name())
	defer tarFile.Close()
	if err := templates.PackContext(tarFile, dir, ig, extra); err != nil {
		return fmt.Errorf("build context %s: %w", dir, err)
	}
	if _, err := tarFile.Seek(0, io.SeekStart); err != nil {
		return err
	}
	b.o.dataDir = envOr("TARTARUS_DATA_DIR", serverDataDir())
	c, err := b.o.client()
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	st, err := c.BuildTemplate(ctx, q, tarFile)
	if err != nil {
		return err
	}
	out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
	fmt.Fprintf(out, "build %s of template %s\n", st.ID, name)
	end, err := c.BuildLog(ctx, name, st.ID, func(e templates.Event) {
		switch e.Type {
		case "step":
			cached := ""
			if e.Cached {
				cached = " (cached)"
			}
			fmt.Fprintf(out, "[%d/%d] %s%s\n", e.Step, e.Total, e.Text, cached)
		case "output":
			w := out
			if e.Stream == "stderr" {
				w = errOut
			}
			fmt.Fprint(w, e.Data)
		case "error":
			fmt.Fprintln(errOut, e.Text)
		}
	})
	if err != nil {
		return err
	}
	if end.Status != templates.StatusSucceeded {
		return fmt.Errorf("build %s failed: %s", st.ID, end.Text)
	}
	fmt.Fprintf(out, "template %s built in %s", end.Template, (time.Duration(end.DurationMS) * time.Millisecond).Round(100*time.Millisecond))
	if end.Text != "" {
		fmt.Fprintf(out, " (%s)", end.Text)
	}
	fmt.Fprintln(out)
	return nil
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
	db := &dockerBuild{}
	cmd := &cobra.Command{
		Use:   "build [--all | NAME... | NAME -f Dockerfile [CONTEXT]]",
		Short: "Build the built-in templates here (skips those whose inputs have not changed), or your own from a Dockerfile on the server",
		RunE: func(cmd *cobra.Command, args []string) error {
			if db.file != "" {
				if all {
					return fmt.Errorf("--all builds the built-in templates; -f builds one of yours")
				}
				return db.run(cmd, args)
			}
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
	cmd.Flags().StringVarP(&db.file, "file", "f", "", "Dockerfile: build template NAME from it, on the server, inside sandboxes")
	cmd.Flags().StringArrayVar(&db.buildArgs, "build-arg", nil, "NAME=value for an ARG (with -f; repeatable)")
	cmd.Flags().IntVar(&db.memory, "memory", 0, "build sandbox memory in MiB (with -f; also the template's snapshot shape)")
	cmd.Flags().IntVar(&db.cpus, "cpus", 0, "build sandbox CPUs (with -f)")
	cmd.Flags().DurationVar(&db.timeout, "timeout", 0, "build time limit (with -f; default 30m)")
	cmd.Flags().StringVar(&db.network, "network", "", "build sandboxes' network mode, e.g. open (with -f; default none)")
	cmd.Flags().StringArrayVar(&db.allow, "allow", nil, "network allow rule for the build (with -f; repeatable)")
	addServerFlags(cmd, &db.o)
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
			fmt.Fprintln(tw, "NAME\tTAGS\tOWNER\tDIGEST\tSIZE\tBUILT\tBUILD TIME\tDESCRIPTION")
			for _, img := range imgs {
				owner := "(built in)"
				if img.Tenant != "" {
					owner = img.Tenant
					if img.Public {
						owner += " (published)"
					}
				}
				took := "-"
				if img.BuildMS > 0 {
					took = (time.Duration(img.BuildMS) * time.Millisecond).Round(100 * time.Millisecond).String()
				}
				tags := "-"
				if len(img.Tags) > 0 {
					tags = strings.Join(img.Tags, ",")
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.1f MiB\t%s\t%s\t%s\n", img.Name, tags, owner, shortDigest(img.Digest),
					float64(img.SizeBytes)/(1<<20), img.BuiltAt.Local().Format(time.DateTime), took, img.Description)
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
				_, err := fmt.Fprintf(w, "template %s saved (%.1f MiB)\n", taggedName(img), float64(img.SizeBytes)/(1<<20))
				return err
			})
		},
	}
	o.addOutputFlag(cmd)
	return cmd
}

// newTemplateImportCmd is `tartarus template import NAME FILE`, `--registry REF`,
// `--docker IMAGE` or `--containerd IMAGE`: an image tarball, or what the
// local Docker daemon's `docker save` or containerd's `ctr images export`
// writes, becomes a template of your tenant.
func newTemplateImportCmd() *cobra.Command {
	o := &clientOptions{}
	var dockerImage, dockerHost, ctrImage, ctrAddress, ctrNamespace, registryRef string
	var insecure bool
	cmd := &cobra.Command{
		Use:   "import NAME (FILE | --docker IMAGE | --containerd IMAGE | --registry REF)",
		Short: "Make a template of an OCI image: a docker save or OCI layout tarball, an image of the local Docker daemon or containerd, or of a registry",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			given := 0
			for _, set := range []bool{len(args) == 2, dockerImage != "", ctrImage != "", registryRef != ""} {
				if set {
					given++
				}
			}
			if given != 1 {
				return fmt.Errorf("give one of a tarball, --docker IMAGE, --containerd IMAGE or --registry REF")
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			if registryRef != "" {
				// The server pulls: the registry is the one it reaches.
				img, err := c.ImportFromRegistry(cmd.Context(), args[0], registryRef, insecure)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "template %s imported from %s (%.1f MiB)\n", taggedName(img), registryRef, float64(img.SizeBytes)/(1<<20))
				return nil
			}
			var (
				body   io.Reader
				source string
				wait   = func() error { return nil }
			)
			switch {
			case dockerImage != "":
				dargs := []string{"save", dockerImage}
				if dockerHost != "" {
					dargs = append([]string{"-H", dockerHost}, dargs...)
				}
				body, wait, err = exportImage(cmd.Context(), "docker", dargs...)
				source = dockerImage
			case ctrImage != "":
				body, wait, err = exportImage(cmd.Context(), "ctr", "--address", ctrAddress, "--namespace", ctrNamespace,
					"images", "export", "-", ctrImage)
				source = ctrImage
			default:
				f, ferr := os.Open(args[1])
				if ferr != nil {
					return ferr
				}
				defer f.Close()
				body, source = f, filepath.Base(args[1])
			}
			if err != nil {
				return err
			}
			img, err := c.ImportImage(cmd.Context(), args[0], source, body)
			if werr := wait(); werr != nil && err == nil {
				err = werr
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "template %s imported from %s (%.1f MiB)\n", taggedName(img), source, float64(img.SizeBytes)/(1<<20))
			return nil
		},
	}
	cmd.Flags().StringVar(&dockerImage, "docker", "", "image of the local Docker daemon (docker save IMAGE)")
	cmd.Flags().StringVar(&dockerHost, "docker-host", "", "the Docker daemon's address (docker -H), default docker's own")
	cmd.Flags().StringVar(&ctrImage, "containerd", "", "image of the local containerd (ctr images export - IMAGE)")
	cmd.Flags().StringVar(&ctrAddress, "containerd-address", "/run/containerd/containerd.sock", "containerd's socket")
	cmd.Flags().StringVar(&ctrNamespace, "containerd-namespace", "default", "the containerd namespace the image is in")
	cmd.Flags().StringVar(&registryRef, "registry", "", "image of a registry the server reaches, HOST[:PORT]/REPO[:TAG|@DIGEST]; the server pulls it")
	cmd.Flags().BoolVar(&insecure, "insecure-registry", false, "let the server pull over plain HTTP from a registry not on its loopback")
	addServerFlags(cmd, o)
	cmd.Flags().StringVar(&o.dataDir, "data-dir", envOr("TARTARUS_DATA_DIR", serverDataDir()), "where to look for admin.key")
	return cmd
}

// exportImage runs a command that writes an image tarball to its stdout
// (docker save, ctr images export -) and returns that output; wait, called
// once the output is read or no longer wanted, reports how the command
// ended, with what it wrote to stderr.
func exportImage(ctx context.Context, name string, args ...string) (io.Reader, func() error, error) {
	export := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	export.Stderr = &stderr
	out, err := export.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := export.Start(); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	return out, func() error {
		// An import refused part way leaves the exporter writing into a
		// full pipe: closing it ends the exporter.
		out.Close()
		if err := export.Wait(); err != nil {
			return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		return nil
	}, nil
}

// taggedName shows a template version by its tag, when it has one.
func taggedName(img *tartarus.Image) string {
	if len(img.Tags) == 0 {
		return img.Name
	}
	return img.Tags[0] + " (version " + img.Name + ")"
}
