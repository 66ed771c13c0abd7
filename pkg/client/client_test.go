package client

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/fake"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

type catalog map[string]*tartarus.Image

func (c catalog) List(context.Context) ([]*tartarus.Image, error) {
	var out []*tartarus.Image
	for _, img := range c {
		out = append(out, img)
	}
	return out, nil
}

func (c catalog) Get(_ context.Context, name string) (*tartarus.Image, error) {
	if img, ok := c[name]; ok {
		return img, nil
	}
	return nil, tartarus.Errorf(tartarus.ErrNotFound, "template %s", name)
}

// newServer runs the real API over the fake runtime; with snapshots, the
// runtime can snapshot and the agent has a snapshot store.
func newServer(t *testing.T, snapshots bool) *Client {
	t.Helper()
	dir := t.TempDir()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(dir, "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	fcfg := fake.Config{StateDir: filepath.Join(dir, "vms")}
	acfg := hecatoncheir.Config{Node: "n1", Store: st, Images: catalog{"base": {Name: "base"}}}
	if snapshots {
		fcfg.Capabilities = &tartarus.Capabilities{Pause: true, Snapshot: true, Files: true, Signal: true, Recover: true}
		blobs, err := erebus.NewLocal(filepath.Join(dir, "snapshots"))
		if err != nil {
			t.Fatal(err)
		}
		acfg.Snapshots, acfg.SnapshotTempDir = blobs, t.TempDir()
	}
	rt, err := fake.New(fcfg)
	if err != nil {
		t.Fatal(err)
	}
	acfg.Runtimes = []tartarus.Runtime{rt}
	agent, err := hecatoncheir.New(acfg)
	if err != nil {
		t.Fatal(err)
	}
	s, err := olympus.New(olympus.Config{Backend: agent})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	c, err := New(srv.URL, "tk_test")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestClient(t *testing.T) {
	ctx := context.Background()
	c := newServer(t, false)
	if err := c.Health(ctx); err != nil {
		t.Fatalf("Health: %v", err)
	}
	sb, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", Env: map[string]string{"V": "1"}})
	if err != nil || sb.State != tartarus.StateRunning {
		t.Fatalf("CreateSandbox: %+v %v", sb, err)
	}
	if _, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{Template: "nope"}); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("create unknown template: %v", err)
	}
	list, err := c.ListSandboxes(ctx)
	if err != nil || len(list) != 1 || list[0].ID != sb.ID {
		t.Errorf("ListSandboxes: %v %v", list, err)
	}
	if got, err := c.GetSandbox(ctx, sb.ID); err != nil || got.ID != sb.ID {
		t.Errorf("GetSandbox: %v %v", got, err)
	}
	res, err := c.Exec(ctx, sb.ID, &api.ExecRequest{Cmd: []string{"sh", "-c", "echo $V; exit 2"}})
	if err != nil || res.Stdout != "1\n" || res.ExitCode != 2 {
		t.Errorf("Exec: %+v %v", res, err)
	}
	var out, errb bytes.Buffer
	sres, err := c.ExecStream(ctx, sb.ID, &api.ExecRequest{Cmd: []string{"sh", "-c", "cat; echo e >&2; exit 5"}, Stdin: "in"}, &out, &errb)
	if err != nil || sres.ExitCode != 5 || out.String() != "in" || errb.String() != "e\n" {
		t.Errorf("ExecStream: %+v %v %q %q", sres, err, out.String(), errb.String())
	}
	data := bytes.Repeat([]byte{0, 1, 2, 255}, 100000)
	if err := c.WriteFile(ctx, sb.ID, "/d/f.bin", 0o600, bytes.NewReader(data)); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	// A reader of unknown length is sent chunked.
	if err := c.WriteFile(ctx, sb.ID, "/d/g.txt", 0o644, io.MultiReader(strings.NewReader("g"))); err != nil {
		t.Fatalf("WriteFile chunked: %v", err)
	}
	rc, err := c.ReadFile(ctx, sb.ID, "/d/f.bin")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("ReadFile: %d bytes %v", len(got), err)
	}
	if _, err := c.ReadFile(ctx, sb.ID, "/d/missing"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("ReadFile missing: %v", err)
	}
	files, err := c.ListFiles(ctx, sb.ID, "/d")
	if err != nil || len(files) != 2 {
		t.Errorf("ListFiles: %v %v", files, err)
	}
	if sb, err := c.Pause(ctx, sb.ID); err != nil || sb.State != tartarus.StatePaused {
		t.Errorf("Pause: %v %v", sb, err)
	}
	if _, err := c.Exec(ctx, sb.ID, &api.ExecRequest{Cmd: []string{"true"}}); !errors.Is(err, tartarus.ErrFailedPrecondition) {
		t.Errorf("Exec while paused: %v", err)
	}
	if sb, err := c.Resume(ctx, sb.ID); err != nil || sb.State != tartarus.StateRunning {
		t.Errorf("Resume: %v %v", sb, err)
	}
	if _, err := c.Hibernate(ctx, sb.ID); !errors.Is(err, tartarus.ErrNotImplemented) {
		t.Errorf("Hibernate: %v", err)
	}
	if _, err := c.Wake(ctx, sb.ID); !errors.Is(err, tartarus.ErrNotImplemented) {
		t.Errorf("Wake: %v", err)
	}
	if tpl, err := c.Templates(ctx); err != nil || len(tpl) != 1 {
		t.Errorf("Templates: %v %v", tpl, err)
	}
	if nodes, err := c.Nodes(ctx); err != nil || len(nodes.Nodes) != 1 || nodes.Nodes[0].Runtimes[0].Runtime != "fake" {
		t.Errorf("Nodes: %+v %v", nodes, err)
	}
	if sb, err := c.DeleteSandbox(ctx, sb.ID); err != nil || sb.State != tartarus.StateTerminated {
		t.Errorf("DeleteSandbox: %v %v", sb, err)
	}
	var apiErr *Error
	if _, err := c.GetSandbox(ctx, "sb-missing"); !errors.As(err, &apiErr) || apiErr.Status != 404 || !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("GetSandbox missing: %v", err)
	}
}

func TestNewRejectsBadURL(t *testing.T) {
	for _, u := range []string{"ftp://x", "127.0.0.1:7700", "http://"} {
		if _, err := New(u, ""); err == nil {
			t.Errorf("New(%q) accepted", u)
		}
	}
}

func TestHibernateWakeFork(t *testing.T) {
	ctx := context.Background()
	c := newServer(t, true)
	sb, err := c.CreateSandbox(ctx, &tartarus.CreateRequest{AutoHibernateS: 300})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteFile(ctx, sb.ID, "/f", 0o644, strings.NewReader("kept")); err != nil {
		t.Fatal(err)
	}
	h, err := c.Hibernate(ctx, sb.ID)
	if err != nil || h.State != tartarus.StateHibernated || h.SnapshotBytes <= 0 || h.AutoHibernateS != 300 {
		t.Fatalf("Hibernate: %+v %v", h, err)
	}
	if list, err := c.ListSandboxes(ctx); err != nil || len(list) != 1 || list[0].SnapshotBytes != h.SnapshotBytes {
		t.Errorf("ListSandboxes while hibernated: %+v %v", list, err)
	}
	if w, err := c.Wake(ctx, sb.ID); err != nil || w.State != tartarus.StateRunning || w.SnapshotBytes != 0 {
		t.Errorf("Wake: %+v %v", w, err)
	}
	kids, err := c.Fork(ctx, sb.ID, 2)
	if err != nil || len(kids) != 2 {
		t.Fatalf("Fork: %v %v", kids, err)
	}
	rc, err := c.ReadFile(ctx, kids[1].ID, "/f")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if string(got) != "kept" {
		t.Errorf("file in a fork: %q", got)
	}
	if _, err := c.Fork(ctx, sb.ID, 17); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("Fork 17: %v", err)
	}
}
