package proto

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/yamux"
)

// YamuxConfig is the yamux configuration both ends use: no keepalive (a
// paused VM must not be declared dead), no open timeout (ctx bounds each
// RPC), windows large enough for fast file transfer, logs to log at debug
// (nil discards).
func YamuxConfig(log *slog.Logger, window uint32) *yamux.Config {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &yamux.Config{
		AcceptBacklog:          256,
		EnableKeepAlive:        false,
		KeepAliveInterval:      time.Minute, // unused, but yamux wants it set
		ConnectionWriteTimeout: time.Minute,
		MaxStreamWindowSize:    window,
		StreamOpenTimeout:      0,
		StreamCloseTimeout:     time.Minute,
		Logger:                 yamuxLogger{log},
	}
}

// GuestWindow bounds the memory one stream's unread input can take in the
// guest (a small VM), HostWindow the same on the host.
const (
	GuestWindow = 2 << 20
	HostWindow  = 8 << 20
)

type yamuxLogger struct{ log *slog.Logger }

func (l yamuxLogger) Print(v ...any)                 { l.log.Debug(fmt.Sprint(v...)) }
func (l yamuxLogger) Printf(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l yamuxLogger) Println(v ...any)               { l.log.Debug(fmt.Sprint(v...)) }
