package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/store/pgtest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestForwardedServices plays a node API over TLS: a policy update reaches
// the node with the sandbox's tenant and the cluster's record takes the new
// policy; a graceful termination is a destroy command carrying its options
// and answers with the node's status once it has one; a port is dialled
// through the node's dial route and carries bytes both ways.
func TestForwardedServices(t *testing.T) {
	admin := pgtest.StartPostgres(t)
	var terminating atomic.Bool
	policy := &tartarus.NetworkSpec{Mode: tartarus.NetworkRestricted, Allow: []string{"example.com"}}
	var sbOnNode atomic.Pointer[tartarus.Sandbox]
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/sandboxes/{id}/network", func(w http.ResponseWriter, r *http.Request) {
		var n tartarus.NetworkSpec
		if r.Header.Get(wire.TenantHeader) != "t1" || json.NewDecoder(r.Body).Decode(&n) != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		sb := *sbOnNode.Load()
		sb.Network = &n
		_ = json.NewEncoder(w).Encode(&sb)
	})
	mux.HandleFunc("GET /v1/sandboxes/{id}/termination", func(w http.ResponseWriter, r *http.Request) {
		if !terminating.Load() {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"error":{"code":"not_found","message":"no termination"}}`)
			return
		}
		_ = json.NewEncoder(w).Encode(&tartarus.TerminationStatus{SandboxID: r.PathValue("id"), Phase: tartarus.PhaseSignaled,
			Reason: tartarus.ReasonUserRequest, GracePeriod: 5 * time.Second})
	})
	mux.HandleFunc("GET /v1/sandboxes/{id}/dial/{port}", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != wire.PortUpgrade || r.PathValue("port") != "8000" {
			http.Error(w, "bad dial", http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + wire.PortUpgrade + "\r\n\r\n")
		_ = brw.Flush()
		line, _ := brw.ReadString('\n')
		_, _ = io.WriteString(conn, "echo "+line)
	})
	node := httptest.NewTLSServer(mux)
	defer node.Close()
	e := newEnvWith(t, admin, "forward", node.Client(), 10*time.Second)
	a := status("a", 4096, nil, false)
	a.Address = node.URL
	e.beat(a, true)
	sb := e.createOn("a")
	sbOnNode.Store(sb)
	ctx := context.Background()

	got, err := e.c.UpdateNetwork(ctx, sb.ID, policy)
	if err != nil || got.Network == nil || !slices.Equal(got.Network.Allow, policy.Allow) {
		t.Fatalf("update network: %+v, %v", got, err)
	}
	if rec, _ := e.c.Get(ctx, sb.ID); rec.Network == nil || rec.Network.Mode != tartarus.NetworkRestricted {
		t.Fatalf("the cluster's record after the update: %+v", rec)
	}

	conn, err := e.c.DialPort(ctx, sb.ID, 8000)
	if err != nil {
		t.Fatalf("dial port: %v", err)
	}
	_, _ = io.WriteString(conn, "hello\n")
	if line, err := bufio.NewReader(conn).ReadString('\n'); err != nil || line != "echo hello\n" {
		t.Fatalf("through the dialled port: %q, %v", line, err)
	}
	conn.Close()

	type answer struct {
		st  *tartarus.TerminationStatus
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		st, err := e.c.Terminate(ctx, sb.ID, &tartarus.ShutdownOptions{GracePeriod: 5 * time.Second, Signal: "SIGTERM"})
		ch <- answer{st, err}
	}()
	cmds := e.poll("a")
	if len(cmds) != 1 || cmds[0].Kind != wire.KindDestroy || cmds[0].Shutdown == nil || cmds[0].Shutdown.GracePeriod != 5*time.Second {
		t.Fatalf("commands for a graceful delete: %+v", cmds)
	}
	terminating.Store(true) // the node started it
	r := <-ch
	if r.err != nil || r.st.Phase != tartarus.PhaseSignaled || r.st.SandboxID != sb.ID {
		t.Fatalf("terminate: %+v, %v", r.st, r.err)
	}
}
