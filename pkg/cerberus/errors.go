package cerberus

import (
	"errors"
	"fmt"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Reasons an authentication fails. They are the "reason" of a 401 answer,
// the audit entry and the failure metric's label, so the set stays small.
const (
	ReasonMissing       = "missing_credentials"
	ReasonMalformed     = "malformed_credentials"
	ReasonInvalidKey    = "invalid_api_key"
	ReasonRevoked       = "revoked_api_key"
	ReasonExpired       = "expired_credentials"
	ReasonNotYetValid   = "credentials_not_yet_valid"
	ReasonWrongAudience = "wrong_audience"
	ReasonWrongIssuer   = "wrong_issuer"
	ReasonBadSignature  = "bad_signature"
	ReasonBadAlgorithm  = "unsupported_algorithm"
	ReasonInvalidToken  = "invalid_token"
	ReasonNoTenant      = "no_tenant"
	ReasonUnknownCert   = "unknown_client_certificate"
	ReasonCertNoName    = "client_certificate_names_no_identity"
	ReasonNotConfigured = "method_not_enabled"
	ReasonUnavailable   = "identity_provider_unavailable"
	// Added for issue 13: identities that could pass for another.
	ReasonEmailUnverified = "email_not_verified"
	ReasonCertAmbiguous   = "client_certificate_ambiguous"
)

// AuthError is a failed authentication. Message is safe to show the client;
// Detail is for the server's log only (it may name a key id or an issuer's
// error, never a secret).
type AuthError struct {
	Reason  string
	Message string
	Detail  string
}

func (e *AuthError) Error() string {
	return fmt.Sprintf("%s: %s", e.Message, tartarus.ErrUnauthenticated)
}

// Unwrap makes errors.Is(err, tartarus.ErrUnauthenticated) hold.
func (e *AuthError) Unwrap() error { return tartarus.ErrUnauthenticated }

func authErr(reason, message, detail string) *AuthError {
	return &AuthError{Reason: reason, Message: message, Detail: detail}
}

// reasonOf returns the reason of an authentication error.
func reasonOf(err error) string {
	var ae *AuthError
	if errors.As(err, &ae) {
		return ae.Reason
	}
	if errors.Is(err, tartarus.ErrUnavailable) {
		return ReasonUnavailable
	}
	return ReasonInvalidToken
}
