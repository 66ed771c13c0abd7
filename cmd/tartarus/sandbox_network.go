package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tartarus-sandbox/tartarus/pkg/netns"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// networkFlags are the policy flags of `sandbox create` and `sandbox network`.
type networkFlags struct {
	mode            string
	allow, deny     []string
	egress, ingress uint64
	publicPorts     bool
	modeFlag        string // --network on create, --mode on network
}

func (nf *networkFlags) add(f *pflag.FlagSet, modeFlag, modeUsage string) {
	nf.modeFlag = modeFlag
	f.StringVar(&nf.mode, modeFlag, "", modeUsage)
	f.StringArrayVar(&nf.allow, "allow", nil, "allow rule: CIDR, IP[:PORT], tcp:CIDR:PORTS or (*.)domain (repeatable)")
	f.StringArrayVar(&nf.deny, "deny", nil, "deny rule, same syntax as --allow (repeatable)")
	f.Uint64Var(&nf.egress, "egress-bps", 0, "upload limit in bits per second (0: unlimited)")
	f.Uint64Var(&nf.ingress, "ingress-bps", 0, "download limit in bits per second (0: unlimited)")
	f.BoolVar(&nf.publicPorts, "public-ports", false, "let anyone reach the sandbox's ports without credentials")
}

// spec builds the network spec, checking every rule here so a typo is
// reported before anything is sent; nil when no network flag was given.
func (nf *networkFlags) spec() (*tartarus.NetworkSpec, error) {
	if nf.mode == "" {
		if len(nf.allow)+len(nf.deny) > 0 || nf.egress+nf.ingress > 0 || nf.publicPorts {
			return nil, fmt.Errorf("--allow, --deny, --egress-bps, --ingress-bps and --public-ports need --%s MODE", nf.modeFlag)
		}
		return nil, nil
	}
	for _, r := range append(append([]string(nil), nf.allow...), nf.deny...) {
		if _, err := netns.ParseRule(r); err != nil {
			return nil, err
		}
	}
	n := &tartarus.NetworkSpec{Mode: nf.mode, Allow: nf.allow, Deny: nf.deny,
		EgressBitsPerSec: nf.egress, IngressBitsPerSec: nf.ingress, PublicPorts: nf.publicPorts}
	return n, n.Check()
}

func newSandboxNetworkCmd(o *clientOptions) *cobra.Command {
	var nf networkFlags
	cmd := &cobra.Command{
		Use:   "network ID --mode MODE [--allow RULE]... [--deny RULE]...",
		Short: "Replace a sandbox's network policy (new connections see it at once)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := nf.spec()
			if err != nil {
				return err
			}
			if n == nil {
				return fmt.Errorf("--mode is required: none, open, restricted or monitored")
			}
			c, asJSON, err := o.jsonClient()
			if err != nil {
				return err
			}
			sb, err := c.SetNetwork(cmd.Context(), args[0], n)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), sb)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s network %s\n", sb.ID, sb.Network)
			return nil
		},
	}
	nf.add(cmd.Flags(), "mode", "mode: none, open, restricted or monitored")
	o.addOutputFlag(cmd)
	return cmd
}

func newSandboxNetworkLogCmd(o *clientOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use: "network-log ID", Short: "Show a sandbox's connection log", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, asJSON, err := o.jsonClient()
			if err != nil {
				return err
			}
			log, err := c.NetworkLog(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), log)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "TIME\tVERDICT\tRULE\tPROTO\tDESTINATION\tNAME\tBYTES OUT/IN")
			for _, r := range log.Records {
				verdict := "denied"
				if r.Allowed {
					verdict = "allowed"
				}
				dst := r.Dst
				if r.Port != 0 {
					dst = fmt.Sprintf("%s:%d", r.Dst, r.Port)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\n", r.Time.Format("15:04:05.000"), verdict, r.Rule, r.Proto, dst, r.Name, r.BytesOut, r.BytesIn)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if dropped := log.Total - uint64(len(log.Records)); dropped > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "(%d older records dropped)\n", dropped)
			}
			return nil
		},
	}
	o.addOutputFlag(cmd)
	return cmd
}

func newSandboxPortTokenCmd(o *clientOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use: "port-token ID", Short: "Print the token that reaches a sandbox's ports without other credentials", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, asJSON, err := o.jsonClient()
			if err != nil {
				return err
			}
			pt, err := c.PortToken(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), pt)
			}
			fmt.Fprintln(cmd.OutOrStdout(), pt.Token)
			return nil
		},
	}
	o.addOutputFlag(cmd)
	return cmd
}
