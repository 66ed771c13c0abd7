package charon

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

func TestOwnTransportReusesConnections(t *testing.T) {
	var conns atomic.Int64
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Write([]byte(`{"ok":true}`))
	}))
	hs.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	hs.Start()
	defer hs.Close()
	b := &backend{name: "a", addr: strings.TrimPrefix(hs.URL, "http://")}
	_, fsrv := newTestFerry(t, Options{Config: quietConfig()}, b.shore())
	c := testClient()
	for _, m := range []string{"GET", "HEAD", "PUT", "DELETE", "POST", "GET"} {
		for range 10 {
			if code, body, _ := do(t, c, m, fsrv.URL+"/x", nil); code != 200 {
				t.Fatalf("%s: %d %s", m, code, body)
			}
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("60 sequential requests used %d connections to the shore, want 1", n)
	}
}

// A shore that closes a kept-alive connection without saying so: the next
// request on the pooled connection fails before any answer and must go
// out again on a new connection, without the client noticing.
func TestOwnTransportRetriesStalePooledConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var served atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				io.Copy(io.Discard, req.Body)
				served.Add(1)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				// and close, without Connection: close
			}()
		}
	}()
	cfg := quietConfig()
	cfg.Retry = RetryConfig{} // defaults: small bodies are kept, so a POST can be sent again
	_, fsrv := newTestFerry(t, Options{Config: cfg}, &Shore{ID: "s", Address: "http://" + ln.Addr().String()})
	c := testClient()
	for i, m := range []string{"GET", "GET", "POST", "GET"} {
		req, _ := http.NewRequest(m, fsrv.URL+"/x", nil)
		if m == "POST" {
			req, _ = http.NewRequest(m, fsrv.URL+"/x", strings.NewReader("{}"))
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "ok" {
			t.Fatalf("request %d (%s): %d %q", i, m, resp.StatusCode, body)
		}
	}
	if served.Load() != 4 {
		t.Fatalf("shore served %d, want 4", served.Load())
	}
}

// A shore that refuses a large upload without reading it: the client must
// get the shore's 413, not a broken pipe turned into 502.
func TestEarlyAnswerToLargeUpload(t *testing.T) {
	b := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusRequestEntityTooLarge)
	})
	_, srv := newTestFerry(t, Options{Config: quietConfig()}, b.shore())
	for _, size := range []int{100, 8 << 20} {
		req, _ := http.NewRequest("PUT", srv.URL+"/v1/sandboxes/sb/files?path=/big", strings.NewReader(strings.Repeat("x", size)))
		resp, err := testClient().Do(req)
		if err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("%d bytes: status %d, want the shore's 413", size, resp.StatusCode)
		}
	}
}
