package link

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// dialPattern is wire.PathDial as a ServeMux pattern.
const dialPattern = "GET /v1/sandboxes/{id}/dial/{port}"

// dialHandler serves wire.PathDial: it opens a connection to a guest port
// (the agent wakes a hibernated sandbox first), switches the request's
// connection to wire.PortUpgrade and copies bytes both ways until either
// side closes. A replica proxies exposed-port requests over it, so the
// credential and public-port checks are the replica's; this side only
// keeps the request within the tenant the replica named.
func dialHandler(agent *hecatoncheir.Agent) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), wire.PortUpgrade) {
			api.WriteError(w, tartarus.Errorf(tartarus.ErrInvalid, "want Upgrade: %s", wire.PortUpgrade), "")
			return
		}
		id := r.PathValue("id")
		port, err := strconv.ParseUint(r.PathValue("port"), 10, 16)
		if err != nil || port == 0 {
			api.WriteError(w, tartarus.Errorf(tartarus.ErrInvalid, "port %q: want 1-65535", r.PathValue("port")), "")
			return
		}
		who := cerberus.IdentityFrom(r.Context())
		sb, err := agent.Get(r.Context(), id)
		if err == nil && (who == nil || sb.Tenant != who.TenantID) {
			err = tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
		}
		if err != nil {
			api.WriteError(w, err, "")
			return
		}
		// The guest connection outlives the request's context (it ends
		// when the hijacked connection does), so it is dialed without it,
		// bounded instead.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 2*time.Minute)
		guest, err := agent.DialPort(dctx, id, uint16(port))
		cancel()
		if err != nil {
			if tartarus.ClassOf(err).Err == nil {
				// Nothing listens there (yet), as the single node says it.
				err = tartarus.Errorf(tartarus.ErrUnavailable, "sandbox %s port %d: %v", id, port, err)
			}
			api.WriteError(w, err, "")
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			guest.Close()
			api.WriteError(w, fmt.Errorf("sandbox %s port %d: %w", id, port, err), "")
			return
		}
		_ = conn.SetDeadline(time.Time{})
		_, err = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + wire.PortUpgrade + "\r\n\r\n")
		if err == nil {
			err = brw.Flush()
		}
		if err != nil {
			conn.Close()
			guest.Close()
			return
		}
		splice(conn, brw.Reader, guest)
	}
}

// splice copies client (whose first bytes may be buffered in br) to guest
// and back until either direction ends, then closes both.
func splice(client net.Conn, br io.Reader, guest net.Conn) {
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			client.Close()
			guest.Close()
		})
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		_, _ = io.Copy(guest, br)
		closeBoth()
	})
	wg.Go(func() {
		_, _ = io.Copy(client, guest)
		closeBoth()
	})
	wg.Wait()
}
