package store

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var updateMigrations = flag.Bool("update-migrations", false, "record the current migrations in testdata")

// TestMigrationsOnlyGrow: the schema version of a database is the number
// of migrations it ran, so a migration that reached a database must keep
// its text and its position. Statements are built from several lists
// (each dialect's own, the components' schemas, laterMigrations); adding a
// statement to a list in the middle moves every one after it, and existing
// databases then skip the new statement and run an old one again. This
// test compares each statement with the digest recorded in testdata at its
// position. A new migration at the end is recorded with
//
//	go test ./pkg/store -run TestMigrationsOnlyGrow -update-migrations
func TestMigrationsOnlyGrow(t *testing.T) {
	for name, d := range map[string]*dialect{"sqlite": sqliteDialect, "postgres": postgresDialect} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join("testdata", "migrations-"+name+".txt")
			var got []string
			for _, m := range d.migrations {
				sum := sha256.Sum256([]byte(m))
				got = append(got, hex.EncodeToString(sum[:8]))
			}
			if *updateMigrations {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(strings.Join(got, "\n")+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			want := strings.Fields(string(b))
			for i, w := range want {
				if i >= len(got) {
					t.Fatalf("migration %d (schema version %d) is gone: released migrations stay", i, i+1)
				}
				if got[i] != w {
					t.Errorf("migration %d (schema version %d) changed or moved: %.80q; never edit or insert before a released migration, append", i, i+1, d.migrations[i])
				}
			}
			if len(got) > len(want) {
				t.Errorf("%d migrations not recorded yet (from %q): check they come after every released one, then run with -update-migrations",
					len(got)-len(want), d.migrations[len(want)])
			}
		})
	}
}
