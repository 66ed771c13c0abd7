package cerberus

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// AdminRole is the role of the key made on first start.
const AdminRole = "platform-admin"

// EnsureAdminKey gives a fresh server its first key. When path (the data
// dir's admin.key) does not exist and the store holds no key at all, it
// creates a platform-admin key of DefaultTenant and writes it to path with
// mode 0600, so that the CLI on the same machine can use it. It never
// replaces an existing file, and never re-creates a key once the operator
// has others. It reports whether it made one.
//
// With a store shared by several replicas starting at once, exactly one of
// them makes the key (KeyStore.CreateFirst) and writes it to its own
// admin.key; the others report false.
func EnsureAdminKey(ctx context.Context, keys *KeyStore, path string) (bool, error) {
	_, err := os.Stat(path)
	if err == nil {
		return false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("admin key: %w", err)
	}
	_, secret, made, err := keys.CreateFirst(ctx, KeySpec{
		Name: "admin (made on first start)", TenantID: DefaultTenant, Roles: []string{AdminRole}, CreatedBy: "system:bootstrap",
	})
	if err != nil {
		return false, fmt.Errorf("admin key: %w", err)
	}
	if !made {
		return false, nil
	}
	if err := writeFileAtomic(path, []byte(string(secret)+"\n"), 0o600); err != nil {
		return false, fmt.Errorf("admin key: write %s: %w", path, err)
	}
	return true, nil
}

// ReadKeyFile reads an API key written by EnsureAdminKey.
func ReadKeyFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
