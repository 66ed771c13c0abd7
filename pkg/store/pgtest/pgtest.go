// Package pgtest starts a throwaway PostgreSQL server for tests; it imports
// nothing of Tartarus, so the packages whose tables the store migrates
// (thanatos, phlegethon) can use it without an import cycle.
package pgtest

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
)

// pgBin is where Debian's postgresql-15 package puts the server binaries.
const pgBin = "/usr/lib/postgresql/15/bin"

// StartPostgres starts a throwaway PostgreSQL server for t on 127.0.0.1
// and a free port, with its data in a temporary directory, and stops it and
// removes the directory when t ends. It returns the DSN of the server's
// "postgres" database as superuser. Postgres refuses to run as root, so as
// root the server runs as the "postgres" user. Without the binaries the
// test is skipped, or fails when TARTARUS_E2E=1.
func StartPostgres(t testing.TB) string {
	t.Helper()
	return StartPostgresServer(t).DSN
}

// PostgresServer is a throwaway PostgreSQL server that a test can restart.
type PostgresServer struct {
	// DSN is the "postgres" database's, as superuser.
	DSN  string
	dir  string
	port int
	cred *syscall.Credential
	logf *os.File
	srv  *exec.Cmd
	done chan error
}

// StartPostgresServer is StartPostgres, returning the server so that the
// test can restart it.
func StartPostgresServer(t testing.TB) *PostgresServer {
	t.Helper()
	if _, err := os.Stat(filepath.Join(pgBin, "postgres")); err != nil {
		if os.Getenv("TARTARUS_E2E") == "1" {
			t.Fatalf("postgres server binaries missing (%v); install the postgresql package", err)
		}
		t.Skipf("postgres server binaries missing (%v); install the postgresql package", err)
	}
	p := &PostgresServer{}
	dir, err := os.MkdirTemp("", "tartarus-pg-")
	if err != nil {
		t.Fatal(err)
	}
	p.dir = dir
	t.Cleanup(func() { os.RemoveAll(dir) })
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root needs the postgres user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		p.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	initdb := exec.Command(filepath.Join(pgBin, "initdb"), "-D", filepath.Join(dir, "data"), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	initdb.Dir = dir
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	p.port = freePort(t)
	p.logf, err = os.Create(filepath.Join(dir, "postgres.log"))
	if err != nil {
		t.Fatal(err)
	}
	p.DSN = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.port)
	t.Cleanup(func() {
		p.Stop()
		p.logf.Close()
	})
	p.Start(t)
	return p
}

// Start starts the server (again) on its port and waits until it answers.
func (p *PostgresServer) Start(t testing.TB) {
	t.Helper()
	// fsync and synchronous_commit stay on: a test that restarts the
	// server checks that what was acknowledged survives.
	p.srv = exec.Command(filepath.Join(pgBin, "postgres"), "-D", filepath.Join(p.dir, "data"), "-p", strconv.Itoa(p.port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "full_page_writes=off")
	p.srv.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred, Setpgid: true}
	p.srv.Dir = p.dir
	p.srv.Stdout, p.srv.Stderr = p.logf, p.logf
	if err := p.srv.Start(); err != nil {
		t.Fatalf("start postgres: %v", err)
	}
	p.done = make(chan error, 1)
	go func(srv *exec.Cmd, done chan error) { done <- srv.Wait() }(p.srv, p.done)
	db, err := sql.Open("pgx", p.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		err := db.PingContext(ctx)
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			log, _ := os.ReadFile(p.logf.Name())
			t.Fatalf("postgres did not come up: %v\n%s", err, log)
		case err := <-p.done:
			log, _ := os.ReadFile(p.logf.Name())
			t.Fatalf("postgres exited: %v\n%s", err, log)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop shuts the server down the way an operator's restart does (a fast
// shutdown: open transactions roll back, committed ones are on disk).
func (p *PostgresServer) Stop() {
	if p.srv == nil {
		return
	}
	_ = p.srv.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.srv.Process.Kill()
		<-p.done
	}
	p.srv = nil
}

// CreateDatabase creates a new empty database on the server of adminDSN
// and returns its DSN.
func CreateDatabase(t testing.TB, adminDSN, name string) string {
	t.Helper()
	db, err := sql.Open("pgx", adminDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE DATABASE "` + name + `"`); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	u := adminDSN[:len(adminDSN)-len("postgres?sslmode=disable")]
	return u + name + "?sslmode=disable"
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
