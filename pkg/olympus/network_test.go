package olympus

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// portBackend serves two sandboxes with a network whose "guest port" is a
// local HTTP server: "priv" of tenant a, and "pub" with public ports.
type portBackend struct {
	Backend
	guest string // host:port of the stand-in guest server
}

func (b portBackend) Get(_ context.Context, id string) (*tartarus.Sandbox, error) {
	switch id {
	case "priv":
		return &tartarus.Sandbox{ID: id, Tenant: "a", State: tartarus.StateRunning, Network: &tartarus.NetworkSpec{Mode: "none"}}, nil
	case "pub":
		return &tartarus.Sandbox{ID: id, Tenant: "a", State: tartarus.StateRunning, Network: &tartarus.NetworkSpec{Mode: "none", PublicPorts: true}}, nil
	}
	return nil, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
}

func (b portBackend) DialPort(ctx context.Context, id string, port uint16) (net.Conn, error) {
	if port != 8080 {
		return nil, fmt.Errorf("connection refused")
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", b.guest)
}

func TestPortRoutes(t *testing.T) {
	guest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "websocket" {
			// A minimal upgrade: switch protocols, then echo one line.
			c, rw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			rw.Flush()
			line, _ := rw.ReadString('\n')
			rw.WriteString("echo " + line)
			rw.Flush()
			return
		}
		fmt.Fprintf(w, "path=%s host=%s auth=%q", r.URL.Path, r.Host, r.Header.Get("Authorization"))
	}))
	defer guest.Close()
	base := newTestAPI(t)
	s, err := New(Config{Backend: portBackend{Backend: base.agent, guest: guest.Listener.Addr().String()},
		Guard: testGuard{}, SandboxDomain: "sb.test"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	defer srv.Close()

	for _, tc := range []struct {
		name, host, path, tenant string
		status                   int
		body                     string
	}{
		{"path route", "", "/v1/sandboxes/priv/ports/8080/a/b?x=1", "a", 200, "path=/a/b host="},
		{"path route, port root", "", "/v1/sandboxes/priv/ports/8080", "a", 200, "path=/ "},
		{"credentials not passed on", "", "/v1/sandboxes/priv/ports/8080/", "a", 200, `auth=""`},
		{"no credentials", "", "/v1/sandboxes/priv/ports/8080/", "", 401, ""},
		{"other tenant", "", "/v1/sandboxes/priv/ports/8080/", "b", 404, ""},
		{"public without credentials", "", "/v1/sandboxes/pub/ports/8080/x", "", 200, "path=/x"},
		{"closed port", "", "/v1/sandboxes/pub/ports/9090/", "", 503, ""},
		{"bad port", "", "/v1/sandboxes/pub/ports/0/", "", 400, ""},
		{"host route", "8080-priv.sb.test", "/c", "a", 200, "path=/c host=8080-priv.sb.test"},
		{"host route public", "8080-pub.sb.test:443", "/", "", 200, "path=/ "},
		{"host route unknown sandbox", "8080-nope.sb.test", "/", "a", 404, ""},
		{"host route bad label", "nope.sb.test", "/", "a", 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", srv.URL+tc.path, nil)
			if tc.host != "" {
				req.Host = tc.host
			}
			if tc.tenant != "" {
				req.Header.Set("X-Test-Tenant", tc.tenant)
				req.Header.Set("Authorization", "Bearer secret")
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || !strings.Contains(string(b), tc.body) {
				t.Errorf("status %d body %q, want %d containing %q", resp.StatusCode, b, tc.status, tc.body)
			}
		})
	}

	t.Run("websocket upgrade", func(t *testing.T) {
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /v1/sandboxes/pub/ports/8080/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		fmt.Fprintf(c, "hello\n")
		line, err := br.ReadString('\n')
		if err != nil || line != "echo hello\n" {
			t.Fatalf("echo: %q %v", line, err)
		}
	})
}
