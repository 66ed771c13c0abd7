package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// newServerCmd is owned by the Olympus work; this stub keeps the tree building.
func newServerCmd() *cobra.Command {
	return &cobra.Command{Use: "server", RunE: func(*cobra.Command, []string) error { return errors.New("not built yet") }}
}
