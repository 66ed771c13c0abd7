package main

import "github.com/spf13/cobra"

// addClientCmds is owned by the Olympus work (sandbox, exec, cp, template).
func addClientCmds(root *cobra.Command) {}
