package thanatos

import (
	"net/http"
	"time"
)

// GuardedHTTPClient returns an HTTP client under the same address rule as
// termination callbacks and webhooks: it reaches no loopback, link-local,
// private, shared, multicast or own address unless allow names it (host
// names, addresses or CIDR prefixes), and it dials the address it checked.
// Other outgoing notifications (Persephone's capacity webhook) use it.
func GuardedHTTPClient(allow []string, timeout time.Duration) (*http.Client, error) {
	guard, err := newAddressGuard(allow, nil)
	if err != nil {
		return nil, err
	}
	return newHTTPClient(guard, timeout), nil
}
