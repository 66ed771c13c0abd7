package cerberus

import (
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

// newFakeClock returns a fake clock near the real time, so certificates
// made with time.Now() are valid in both the TLS handshake (real time) and
// Cerberus (this clock).
func newFakeClock() *clock.Fake { return clock.NewFake(time.Now().Truncate(time.Second)) }
