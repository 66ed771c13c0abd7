package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/kampe"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/containerd"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/docker"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

type migrateOptions struct {
	dockerHost, dataDir, template, output string
	tenant                                string
	containerd, namespace                 string
	url, apiKey                           string
	planOnly, force, replace, start       bool
	memoryMB, cpus                        int
}

// newMigrateCmd is `tartarus migrate CONTAINER`: plan the move of a Docker
// container to a microVM, build the template, and optionally start it.
func newMigrateCmd() *cobra.Command {
	o := &migrateOptions{}
	cmd := &cobra.Command{
		Use:   "migrate CONTAINER",
		Short: "Move a Docker (or containerd) container to a microVM template",
		Long: `Inspect a Docker container (or, with --containerd, a containerd one) and
move it to a microVM template.

First the plan: what differs between the container and a microVM (host bind
mounts, host networking, privileged mode, devices, published ports, shared
namespaces, …), each change marked required or fixed automatically, with a
risk level. A plan with a required change that cannot be fixed automatically
stops here unless --force is given.

Then the move: the container's file system (docker export, plus the current
content of its volumes), environment, entrypoint, command, working directory
and user become template NAME under DATA/images/templates/NAME (rootfs.ext4
and manifest.json; the kernel and initramfs are the base template's). With
--start, a sandbox is created from it through the API.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runMigrate(cmd.Context(), o, args[0], cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dockerHost, "docker-host", os.Getenv("DOCKER_HOST"), "Docker daemon address ($DOCKER_HOST; default its socket)")
	f.StringVar(&o.containerd, "containerd", "", "migrate from containerd at this socket instead of Docker")
	f.StringVar(&o.namespace, "namespace", "default", "containerd namespace of the container (with --containerd)")
	f.StringVar(&o.dataDir, "data-dir", envOr("TARTARUS_DATA_DIR", serverDataDir()), "Tartarus data directory the template goes into")
	f.StringVar(&o.template, "template", "", "name of the new template (default migrated-<container name>)")
	f.StringVar(&o.tenant, "tenant", kampe.DefaultTenant, "tenant that owns the template (only it may list and use it until `tartarus template publish`)")
	f.BoolVar(&o.planOnly, "plan", false, "only print the plan")
	f.BoolVar(&o.force, "force", false, "migrate despite required changes that need a person (they are left out)")
	f.BoolVar(&o.replace, "replace", false, "replace an existing template of the same name")
	f.BoolVar(&o.start, "start", false, "create a sandbox from the new template through the API")
	f.IntVar(&o.memoryMB, "memory", 0, "memory of the started sandbox in MiB (default: the server's)")
	f.IntVar(&o.cpus, "cpus", 0, "CPUs of the started sandbox (default: the server's)")
	f.StringVar(&o.url, "url", envOr("TARTARUS_URL", client.DefaultURL), "API URL for --start ($TARTARUS_URL)")
	f.StringVar(&o.apiKey, "api-key", "", "API key for --start ($TARTARUS_API_KEY, else DATA/admin.key)")
	f.StringVarP(&o.output, "output", "o", "text", "text or json")
	return cmd
}

func runMigrate(ctx context.Context, o *migrateOptions, container string, stdout, stderr io.Writer) error {
	if o.output != "text" && o.output != "json" {
		return tartarus.Errorf(tartarus.ErrInvalid, "--output %q: want text or json", o.output)
	}
	cache, err := os.MkdirTemp("", "tartarus-migrate-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(cache)
	rt, err := o.migrator(cache)
	if err != nil {
		return err
	}
	defer rt.Close()
	plan, err := rt.MigrateToMicroVM(ctx, container)
	if err != nil {
		return err
	}
	if o.planOnly {
		if o.output == "json" {
			return printJSON(stdout, plan)
		}
		printPlan(stdout, plan)
		return nil
	}
	if o.output == "text" {
		printPlan(stderr, plan)
		if len(plan.Blocking()) == 0 || o.force {
			fmt.Fprintf(stderr, "\nmigrating %s: exporting the file system and building the template…\n", container)
		}
	}
	res, err := rt.Migrate(ctx, container, kampe.MigrateOptions{DataDir: o.dataDir, Template: o.template,
		Force: o.force, Replace: o.replace, Tenant: o.tenant})
	if err != nil {
		if errors.Is(err, tartarus.ErrFailedPrecondition) {
			return fmt.Errorf("not migrated: %w", err)
		}
		return err
	}
	var sb *tartarus.Sandbox
	if o.start {
		sb, err = startMigrated(ctx, o, res)
		if err != nil {
			return fmt.Errorf("template %s built in %s, but starting it failed: %w", res.Template, res.Dir, err)
		}
	}
	if o.output == "json" {
		return printJSON(stdout, struct {
			*kampe.MigrateResult
			Sandbox *tartarus.Sandbox `json:"sandbox,omitempty"`
		}{res, sb})
	}
	fmt.Fprintf(stdout, "template %s built in %s (%s)\n", res.Template, res.Dir, res.Duration.Round(time.Millisecond))
	fmt.Fprintf(stdout, "  root filesystem: %s\n", res.RootFS)
	if res.SkippedEntries > 0 {
		fmt.Fprintf(stdout, "  %d device nodes or special files were not carried (the guest has its own /dev)\n", res.SkippedEntries)
	}
	if !res.Bootable {
		fmt.Fprintf(stdout, "  not bootable yet: %s\n", res.Missing)
	}
	if sb != nil {
		fmt.Fprintf(stdout, "sandbox %s started from it (state %s)\n", sb.ID, sb.State)
	} else {
		fmt.Fprintf(stdout, "start it: tartarus sandbox create --template %s\n", res.Template)
	}
	return nil
}

func startMigrated(ctx context.Context, o *migrateOptions, res *kampe.MigrateResult) (*tartarus.Sandbox, error) {
	key := o.apiKey
	if key == "" {
		key = os.Getenv("TARTARUS_API_KEY")
	}
	if key == "" {
		if b, err := os.ReadFile(filepath.Join(o.dataDir, "admin.key")); err == nil {
			key = strings.TrimSpace(string(b))
		}
	}
	c, err := client.New(o.url, key)
	if err != nil {
		return nil, err
	}
	return c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: res.Template, MemoryMB: o.memoryMB, CPUs: o.cpus})
}

// migrator is what migrate needs of a container runtime.
type migrator interface {
	MigrateToMicroVM(ctx context.Context, containerID string) (*kampe.MigrationPlan, error)
	Migrate(ctx context.Context, containerID string, opts kampe.MigrateOptions) (*kampe.MigrateResult, error)
	Close() error
}

func (o *migrateOptions) migrator(cache string) (migrator, error) {
	if o.containerd != "" {
		return containerd.New(containerd.Options{Address: o.containerd, Namespace: o.namespace, CacheDir: cache})
	}
	return docker.New(docker.Options{Host: o.dockerHost, CacheDir: cache})
}

// printPlan writes the plan for a person.
func printPlan(w io.Writer, p *kampe.MigrationPlan) {
	fmt.Fprintf(w, "container %s → template %s\n", p.ContainerID, p.TargetTemplate)
	fmt.Fprintf(w, "risk: %s, estimated downtime: %s\n", p.RiskLevel, p.EstimatedDowntime)
	if len(p.RequiredChanges) == 0 {
		fmt.Fprintln(w, "changes: none")
	} else {
		fmt.Fprintln(w, "changes:")
	}
	for _, c := range p.RequiredChanges {
		mark := "note    "
		switch {
		case c.Required && !c.AutoFix:
			mark = "BLOCKING"
		case c.AutoFix:
			mark = "auto-fix"
		case c.Required:
			mark = "required"
		}
		fmt.Fprintf(w, "  [%s] %-11s %s\n", mark, c.Type, c.Description)
	}
	for _, r := range p.Recommendations {
		fmt.Fprintf(w, "→ %s\n", r)
	}
}
