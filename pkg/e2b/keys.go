package e2b

import "strings"

// E2B's SDKs expect keys of the form e2b_<hex> (the Python SDK checks it).
// A Tartarus key is tk_<12 hex id>_<64 hex secret>; its E2B form is the
// same id and secret joined after e2b_, so either form works on the E2B
// API and neither is stored twice.

const (
	nativePrefix = "tk_"
	e2bPrefix    = "e2b_"
	idHex        = 12
	secretHex    = 64
)

// E2BKey returns the e2b_ form of a Tartarus API key, or "" when key is
// not one.
func E2BKey(key string) string {
	rest, ok := strings.CutPrefix(key, nativePrefix)
	if !ok {
		return ""
	}
	id, secret, ok := strings.Cut(rest, "_")
	if !ok || len(id) != idHex || len(secret) != secretHex || !lowerHex(id+secret) {
		return ""
	}
	return e2bPrefix + id + secret
}

// NativeKey returns the Tartarus form of key: an e2b_ key made by E2BKey
// is turned back; anything else is returned as it is (the native API
// judges it).
func NativeKey(key string) string {
	rest, ok := strings.CutPrefix(key, e2bPrefix)
	if !ok || len(rest) != idHex+secretHex || !lowerHex(rest) {
		return key
	}
	return nativePrefix + rest[:idHex] + "_" + rest[idHex:]
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
