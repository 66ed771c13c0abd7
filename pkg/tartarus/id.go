package tartarus

import (
	"crypto/rand"
	"encoding/hex"
)

// NewID returns prefix followed by 16 hex digits of crypto/rand: the one
// id format of Tartarus. The prefixes in use are "sb-" (sandboxes, minted
// by the single-node agent and by cluster replicas alike), "cmd-"
// (cluster commands), "snap-" (snapshots) and "" (request ids).
func NewID(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand.Read panics instead)
	return prefix + hex.EncodeToString(b[:])
}
