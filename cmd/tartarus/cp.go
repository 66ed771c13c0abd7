package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
)

func newCpCmd(o *clientOptions) *cobra.Command {
	var mode string
	cmd := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy a file into or out of a sandbox (LOCAL ID:/path or ID:/path LOCAL; - is stdin/stdout)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			srcID, srcPath, srcRemote := splitRemote(args[0])
			dstID, dstPath, dstRemote := splitRemote(args[1])
			switch {
			case srcRemote == dstRemote:
				return errors.New("cp: exactly one of SRC and DST must be ID:/path")
			case dstRemote:
				return cpIn(cmd.Context(), c, args[0], dstID, dstPath, mode)
			default:
				return cpOut(cmd.Context(), c, srcID, srcPath, args[1], cmd.OutOrStdout())
			}
		},
	}
	cmd.Flags().StringVar(&mode, "mode", "", "permission bits of the copied file, octal (default: the local file's)")
	return cmd
}

// splitRemote reads "ID:/path". Local paths never look like that: a
// sandbox id has no '/' and the path after ':' is absolute.
func splitRemote(s string) (id, path string, ok bool) {
	id, path, ok = strings.Cut(s, ":")
	if !ok || id == "" || !strings.HasPrefix(path, "/") || strings.Contains(id, "/") {
		return "", "", false
	}
	return id, path, true
}

func cpIn(ctx context.Context, c *client.Client, local, id, path, mode string) error {
	var r io.Reader = os.Stdin
	perm := os.FileMode(0o644)
	if local != "-" {
		f, err := os.Open(local)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		if st.IsDir() {
			return fmt.Errorf("cp: %s is a directory; copy files one by one (or tar them)", local)
		}
		perm = st.Mode().Perm()
		r = f
	}
	if mode != "" {
		var m uint32
		if _, err := fmt.Sscanf(mode, "%o", &m); err != nil || m > 0o7777 {
			return fmt.Errorf("--mode %q: want octal bits like 0644", mode)
		}
		perm = os.FileMode(m)
	}
	return c.WriteFile(ctx, id, path, perm, r)
}

func cpOut(ctx context.Context, c *client.Client, id, path, local string, stdout io.Writer) error {
	rc, err := c.ReadFile(ctx, id, path)
	if err != nil {
		return err
	}
	defer rc.Close()
	if local == "-" {
		_, err := io.Copy(stdout, rc)
		return err
	}
	if st, err := os.Stat(local); err == nil && st.IsDir() {
		local = filepath.Join(local, filepath.Base(path))
	}
	// Write beside the target and rename, so a cut transfer leaves no
	// half file under the wanted name.
	tmp, err := os.CreateTemp(filepath.Dir(local), "."+filepath.Base(local)+".part-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, rc); err != nil {
		tmp.Close()
		return fmt.Errorf("cp: download cut: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), local)
}
