package charon

import "time"

// Clock tells the time. Breakers, ejections, rate-limit buckets and the retry
// budget read it, so tests drive them with a fake clock and never sleep.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }
