package main

import (
	"testing"

	"github.com/spf13/cobra"
)

// TestEveryCommandBuilds builds the whole command tree and parses every
// command's flags: a flag defined twice (two branches adding the same one)
// panics here, in the unit tests, instead of in every end-to-end test that
// starts the binary.
func TestEveryCommandBuilds(t *testing.T) {
	var walk func(c *cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		n++
		if err := c.ParseFlags(nil); err != nil {
			t.Errorf("%s: %v", c.CommandPath(), err)
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCmd())
	if n < 20 {
		t.Errorf("only %d commands in the tree", n)
	}
}
