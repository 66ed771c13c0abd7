// Command tartarus is the one Tartarus binary: the API server, the node
// agent, the ferry in front of servers, and the client verbs.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/jail"
)

func main() {
	// A jailed QEMU starts as this binary re-executed as the jail's shim.
	jail.RunShimIfAsked(nil)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		var ee exitError
		if asExit(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "tartarus:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "tartarus",
		Short:         "Run untrusted code in isolated sandboxes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newServerCmd(),
		newAgentCmd(),
		newFerryCmd(),
		newAPIKeyCmd(),
		newAuditCmd(),
		newTemplateCmd(),
		newCertsCmd(),
		newMigrateCmd(),
	)
	addClientCmds(root)
	return root
}
