package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/spf13/pflag"

	"github.com/tartarus-sandbox/tartarus/pkg/e2b"
)

// e2bOptions are the flags of the E2B-compatible listener (docs/e2b.md).
type e2bOptions struct {
	addr, domain    string
	tlsCert, tlsKey string
	templates       map[string]string
	home            string
}

func addE2BFlags(f *pflag.FlagSet, o *e2bOptions) {
	f.StringVar(&o.addr, "e2b-addr", "", "also serve E2B's API (for E2B's SDKs) on this address, e.g. :3000 (docs/e2b.md)")
	f.StringVar(&o.domain, "e2b-domain", "", "sandbox domain of the E2B API: envd answers for 49983-SANDBOXID.DOMAIN (point a wildcard DNS name at the server)")
	f.StringVar(&o.tlsCert, "e2b-tls-cert", "", "serve the E2B API over HTTPS with this certificate (PEM; `tartarus certs dev` makes one)")
	f.StringVar(&o.tlsKey, "e2b-tls-key", "", "private key of --e2b-tls-cert (PEM)")
	f.StringToStringVar(&o.templates, "e2b-template", nil, "map an E2B template name onto a Tartarus template, NAME=TEMPLATE (repeatable; base=python is built in)")
	f.StringVar(&o.home, "e2b-home", "/root", "directory that relative paths in E2B file calls are resolved against")
}

// validate reports every problem of the E2B flags.
func (o *e2bOptions) validate() error {
	var errs []error
	if (o.tlsCert == "") != (o.tlsKey == "") {
		errs = append(errs, errors.New("--e2b-tls-cert and --e2b-tls-key go together"))
	}
	if o.addr == "" && (o.domain != "" || o.tlsCert != "" || len(o.templates) > 0) {
		errs = append(errs, errors.New("--e2b-domain, --e2b-tls-cert and --e2b-template need --e2b-addr"))
	}
	return errors.Join(errs...)
}

// e2bListener is the running E2B listener.
type e2bListener struct {
	srv     *http.Server
	handler *e2b.Handler
	errc    chan error
}

// startE2B serves the E2B API in front of native (the server's own API
// handler, behind its guard) when --e2b-addr is set; nil otherwise.
func startE2B(o *e2bOptions, native http.Handler, log *slog.Logger, out io.Writer) (*e2bListener, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.addr == "" {
		return nil, nil
	}
	templates := map[string]string{}
	for k, v := range e2b.DefaultTemplates {
		templates[k] = v
	}
	for k, v := range o.templates {
		templates[k] = v
	}
	h, err := e2b.New(e2b.Config{Native: native, Domain: o.domain, Templates: templates, Home: o.home, Log: log})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("--e2b-addr: %w", err)
	}
	scheme := "http"
	if o.tlsCert != "" {
		pair, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			ln.Close()
			h.Close()
			return nil, fmt.Errorf("--e2b-tls-cert/--e2b-tls-key: %w", err)
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12})
		scheme = "https"
	}
	// No write timeout: command output and file transfers stream.
	l := &e2bListener{handler: h, errc: make(chan error, 1),
		srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}}
	go func() { l.errc <- l.srv.Serve(ln) }()
	url := fmt.Sprintf("%s://%s", scheme, ln.Addr())
	log.Info("serving the E2B API", "url", url, "domain", o.domain)
	fmt.Fprintf(out, "E2B API on %s: export E2B_API_URL=%s E2B_SANDBOX_URL=%s\n", url, url, url)
	return l, nil
}

// shutdown stops the listener, giving requests in flight until ctx ends.
func (l *e2bListener) shutdown(ctx context.Context) {
	if l == nil {
		return
	}
	_ = l.srv.Shutdown(ctx)
	_ = l.handler.Close()
}
