package main

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/http"

	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
)

// authOptions are the server's authentication flags. Owned by the Cerberus
// work; server.go only calls addAuthFlags and setup.
type authOptions struct{}

// authSetup is what the server needs from Cerberus.
type authSetup struct {
	Guard cerberus.Guard
	// Routes are extra API routes ("GET /v1/apikeys" → handler) that the
	// server mounts behind Guard.
	Routes map[string]http.Handler
	// TLS, when not nil, makes the server listen with TLS (and, with client
	// CAs set, verify client certificates).
	TLS   *tls.Config
	Close func() error
}

func addAuthFlags(cmd *cobra.Command) *authOptions { return &authOptions{} }

func (o *authOptions) setup(ctx context.Context, dataDir string, log *slog.Logger) (*authSetup, error) {
	return &authSetup{Guard: cerberus.Open(), Close: func() error { return nil }}, nil
}
