package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// newAPIKeyCmd and newAuditCmd are owned by the Cerberus work.
func newAPIKeyCmd() *cobra.Command {
	return &cobra.Command{Use: "apikey", RunE: func(*cobra.Command, []string) error { return errors.New("not built yet") }}
}

func newAuditCmd() *cobra.Command {
	return &cobra.Command{Use: "audit", RunE: func(*cobra.Command, []string) error { return errors.New("not built yet") }}
}
