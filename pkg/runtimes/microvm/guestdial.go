package microvm

import (
	"context"
	"io"
	"log/slog"

	"github.com/tartarus-sandbox/tartarus/pkg/guest"
)

var _ guestConn = (*guest.Client)(nil)

// dialGuest meets the real guest agent.
func dialGuest(ctx context.Context, conn io.ReadWriteCloser, log *slog.Logger, sync guestSync) (guestConn, error) {
	return guest.DialSync(ctx, conn, log, sync.now, sync.hostname)
}
