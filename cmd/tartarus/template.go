package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// newTemplateCmd is owned by the images work (template build, template ls).
func newTemplateCmd() *cobra.Command {
	return &cobra.Command{Use: "template", RunE: func(*cobra.Command, []string) error { return errors.New("not built yet") }}
}
