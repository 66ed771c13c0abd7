package olympus

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// TestPortTokens: a sandbox's port access token reaches its ports without
// credentials, as a header, or once in the query (then a cookie, after a
// redirect that drops it from the URL); it opens no other sandbox; the
// guest sees no token, cookie of ours or credential; the token route needs
// the tenant's credentials.
func TestPortTokens(t *testing.T) {
	guest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "path=%s query=%q cookie=%q auth=%q token=%q", r.URL.Path, r.URL.RawQuery,
			r.Header.Get("Cookie"), r.Header.Get("Authorization"), r.Header.Get(PortTokenHeader))
	}))
	defer guest.Close()
	base := newTestAPI(t)
	s, err := New(Config{Backend: portBackend{Backend: base.agent, guest: guest.Listener.Addr().String()},
		Guard: testGuard{}, SandboxDomain: "sb.test", PortTokenKey: bytes.Repeat([]byte{7}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	defer srv.Close()
	if _, err := New(Config{Backend: base.agent, PortTokenKey: []byte("short")}); err == nil {
		t.Error("a 5-byte port token key was accepted")
	}

	get := func(t *testing.T, path, host string, hdr map[string]string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		if host != "" {
			req.Host = host
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b)
	}

	resp, body := get(t, "/v1/sandboxes/priv/ports/token", "", nil)
	if resp.StatusCode != 401 {
		t.Fatalf("token without credentials: %d %s", resp.StatusCode, body)
	}
	if resp, body = get(t, "/v1/sandboxes/priv/ports/token", "", map[string]string{"X-Test-Tenant": "b"}); resp.StatusCode != 404 {
		t.Fatalf("token of another tenant's sandbox: %d %s", resp.StatusCode, body)
	}
	resp, body = get(t, "/v1/sandboxes/priv/ports/token", "", map[string]string{"X-Test-Tenant": "a"})
	var pt api.PortToken
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &pt) != nil || !strings.HasPrefix(pt.Token, "tpt_") ||
		pt.Header != PortTokenHeader || pt.QueryParam != PortTokenParam {
		t.Fatalf("token: %d %s", resp.StatusCode, body)
	}
	tok := pt.Token
	otherTok := s.tokens.token("pub")

	for _, tc := range []struct {
		name, path, host string
		hdr              map[string]string
		status           int
		want             string
	}{
		{"header", "/v1/sandboxes/priv/ports/8080/a?x=1", "", map[string]string{PortTokenHeader: tok}, 200, `path=/a query="x=1" cookie="" auth="" token=""`},
		{"the guest app's own Authorization passes with a token", "/v1/sandboxes/priv/ports/8080/h", "", map[string]string{PortTokenHeader: tok, "Authorization": "Bearer app"}, 200, `auth="Bearer app" token=""`},
		{"host route, header", "/b", "8080-priv.sb.test", map[string]string{PortTokenHeader: tok}, 200, "path=/b"},
		{"cookie", "/v1/sandboxes/priv/ports/8080/c", "", map[string]string{"Cookie": PortTokenCookie + "=" + tok + "; app=1"}, 200, `path=/c query="" cookie="app=1"`},
		{"a cookie of another sandbox's first", "/v1/sandboxes/priv/ports/8080/g", "", map[string]string{"Cookie": PortTokenCookie + "=" + otherTok + "; " + PortTokenCookie + "=" + tok}, 200, `path=/g query="" cookie=""`},
		{"another sandbox's token", "/v1/sandboxes/priv/ports/8080/", "", map[string]string{PortTokenHeader: otherTok}, 401, ""},
		{"a wrong token", "/v1/sandboxes/priv/ports/8080/", "", map[string]string{PortTokenHeader: tok + "x"}, 401, ""},
		{"no token", "/v1/sandboxes/priv/ports/8080/", "", nil, 401, ""},
		{"credentials still work", "/v1/sandboxes/priv/ports/8080/d", "", map[string]string{"X-Test-Tenant": "a", "Authorization": "Bearer k"}, 200, `path=/d query="" cookie="" auth=""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := get(t, tc.path, tc.host, tc.hdr)
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.want) {
				t.Errorf("%d %q, want %d containing %q", resp.StatusCode, body, tc.status, tc.want)
			}
		})
	}

	t.Run("query once, then a cookie", func(t *testing.T) {
		resp, body := get(t, "/v1/sandboxes/priv/ports/8080/e?a=1&"+PortTokenParam+"="+tok, "", nil)
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/v1/sandboxes/priv/ports/8080/e?a=1" {
			t.Fatalf("%d Location %q %s; want 303 to the URL without the token", resp.StatusCode, resp.Header.Get("Location"), body)
		}
		var c *http.Cookie
		for _, rc := range resp.Cookies() {
			if rc.Name == PortTokenCookie {
				c = rc
			}
		}
		if c == nil || c.Value != tok || !c.HttpOnly || c.Path != "/v1/sandboxes/priv/ports/" || c.SameSite != http.SameSiteLaxMode {
			t.Fatalf("cookie %+v", c)
		}
		if resp, body = get(t, resp.Header.Get("Location"), "", map[string]string{"Cookie": c.Name + "=" + c.Value}); resp.StatusCode != 200 ||
			!strings.Contains(body, `path=/e query="a=1" cookie=""`) {
			t.Errorf("after the redirect: %d %s", resp.StatusCode, body)
		}
		// On a host route the cookie is the host's (one sandbox, one port).
		resp, _ = get(t, "/f?"+PortTokenParam+"="+tok, "8080-priv.sb.test", nil)
		if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) != 1 || resp.Cookies()[0].Path != "/" || resp.Cookies()[0].Domain != "" {
			t.Errorf("host route: %d %+v", resp.StatusCode, resp.Cookies())
		}
	})

	t.Run("create returns the token", func(t *testing.T) {
		a := base.do(t, call{method: "POST", path: "/v1/sandboxes", tenant: "a", body: `{"template":"base"}`})
		if a.header.Get(PortTokenHeader) != "" {
			t.Errorf("a sandbox without a network got a port token")
		}
	})
}

// TestSandboxDomainExact: host routes take exactly PORT-ID.DOMAIN from the
// Host header; suffix tricks, X-Forwarded-Host and a TLS server name other
// than the host do not reach a sandbox.
func TestSandboxDomainExact(t *testing.T) {
	guest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "guest") }))
	defer guest.Close()
	base := newTestAPI(t)
	s, err := New(Config{Backend: portBackend{Backend: base.agent, guest: guest.Listener.Addr().String()},
		Guard: testGuard{}, SandboxDomain: "sb.test"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(s)
	defer srv.Close()
	for _, tc := range []struct {
		name, host, sni, xfh string
		guest                bool
	}{
		{"exact", "8080-pub.sb.test", "8080-pub.sb.test", "", true},
		{"no SNI (an IP address)", "8080-pub.sb.test", "", "", true},
		{"another name's connection", "8080-pub.sb.test", "api.sb.test", "", false},
		{"a longer domain", "8080-pub.sb.test.evil.example", "", "", false},
		{"a domain ending the same", "8080-pub.xsb.test", "", "", false},
		{"two labels", "x.8080-pub.sb.test", "", "", false},
		{"X-Forwarded-Host", "api.example", "", "8080-pub.sb.test", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := srv.Client().Transport.(*http.Transport).Clone()
			tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true, ServerName: tc.sni}
			req, _ := http.NewRequest("GET", srv.URL+"/", nil)
			req.Host = tc.host
			if tc.xfh != "" {
				req.Header.Set("X-Forwarded-Host", tc.xfh)
			}
			resp, err := (&http.Client{Transport: tr}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if got := string(b) == "guest"; got != tc.guest {
				t.Errorf("%d %q; reached the guest: %v, want %v", resp.StatusCode, b, got, tc.guest)
			}
		})
	}
}
