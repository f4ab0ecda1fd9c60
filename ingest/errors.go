package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/schemas/envelope"
)

// Error codes of the HTTP API, beyond the envelope decoder's (envelope.Code*,
// used as they are for a bad event) and the pipeline's sequence reasons
// (SEQ_CONFLICT, SEQ_GAP, SEQ_STALE). They are stable: clients match on them.
// docs/api.md lists each with its HTTP status.
const (
	CodeUnauthenticated    = "UNAUTHENTICATED"        // 401: no or unknown credentials
	CodeForbidden          = "FORBIDDEN"              // 403: the role may not call this endpoint
	CodeTenantMismatch     = "TENANT_MISMATCH"        // 403: the request names another tenant than the credentials
	CodeManifestForbidden  = "MANIFEST_FORBIDDEN"     // 403: an event names a manifest the credentials may not use (KeyEntry.Manifests)
	CodeManifestNotAllowed = "MANIFEST_NOT_ALLOWED"   // 403: a caller-supplied manifest outside dev mode, by a role that may not test policies
	CodeMalformedRequest   = "MALFORMED_REQUEST"      // 400: the request (not an event in it) is malformed
	CodeClockSkew          = "CLOCK_SKEW"             // 400: ts_unix_ms is further than --max-clock-skew from the gateway's clock
	CodeBodyTooLarge       = "BODY_TOO_LARGE"         // 413: the body exceeds --max-body-bytes
	CodeTooManyEvents      = "TOO_MANY_EVENTS"        // 413: more events than --max-batch-events in one request
	CodeUnsupportedMedia   = "UNSUPPORTED_MEDIA_TYPE" // 415
	CodeRateLimited        = "RATE_LIMITED"           // 429, with Retry-After
	CodeTooManyApprovals   = "TOO_MANY_APPROVALS"     // 429: the tenant has --max-pending-approvals pending on this gateway
	CodeNotFound           = "NOT_FOUND"              // 404
	CodeDecisionTimeout    = "DECISION_TIMEOUT"       // 504: recorded, but no decision within the wait
	CodeBrokerUnavailable  = "BROKER_UNAVAILABLE"     // 503: Kafka did not acknowledge
	CodeStoreUnavailable   = "STORE_UNAVAILABLE"      // 503: the audit store failed
	CodeNoStore            = "STORE_NOT_CONFIGURED"   // 501: read endpoints need the audit store
	CodeApprovalInvalid    = "APPROVAL_TOKEN_INVALID" // 404: not a token this server issued (or tampered with)
	CodeApprovalNotPending = "APPROVAL_NOT_PENDING"   // 409: already decided (a replayed token)
	CodeApprovalMismatch   = "APPROVAL_MISMATCH"      // 409: the token is bound to another tool or other arguments
	CodeApprovalExpired    = "APPROVAL_EXPIRED"       // 410: the approval expired and was denied
	CodeInternal           = "INTERNAL"               // 500
	CodeRequestTimeout     = "REQUEST_TIMEOUT"        // 408: the body did not arrive within the read timeout
	CodeCanceled           = "REQUEST_CANCELED"       // 503: canceled before it completed (client gone, or the server shutting down)
	CodeRouteNotFound      = "ROUTE_NOT_FOUND"        // 404: no endpoint at this path
	CodeMethodNotAllowed   = "METHOD_NOT_ALLOWED"     // 405: the path takes other methods (listed in Allow)
)

// apiError is an error with an HTTP status and a stable code.
type apiError struct {
	Status  int
	Code    string
	Message string
	// RetryAfter, if positive, is sent as the Retry-After header.
	RetryAfter time.Duration
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

func errf(status int, code, format string, args ...any) *apiError {
	return &apiError{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorBody is the body of every error response.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is a stable code and a message for people.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Field names the offending event field for envelope errors.
	Field string `json:"field,omitempty"`
	// ExpectedSeq is the seq the session expects next, for SEQ_* codes.
	ExpectedSeq uint64 `json:"expected_seq,omitempty"`
}

// eventError maps a decoding error of one event to its status and detail:
// TOO_LARGE is 413, every other decoder code 400.
func eventError(err error) (int, ErrorDetail) {
	var e *envelope.Error
	if errors.As(err, &e) {
		status := http.StatusBadRequest
		if e.Code == envelope.CodeTooLarge {
			status = http.StatusRequestEntityTooLarge
		}
		return status, ErrorDetail{Code: e.Code, Message: e.Msg, Field: e.Field}
	}
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.Status, ErrorDetail{Code: ae.Code, Message: ae.Message}
	}
	switch {
	case errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable, ErrorDetail{Code: CodeCanceled, Message: "the request was canceled before it completed; retry it (the pipeline drops exact duplicates)"}
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, ErrorDetail{Code: CodeDecisionTimeout, Message: "the pipeline did not answer in time"}
	}
	return http.StatusBadRequest, ErrorDetail{Code: envelope.CodeInvalidJSON, Message: err.Error()}
}

// rejectionError maps a pipeline rejection of a record the gateway
// published to its HTTP status: sequence reasons and MANIFEST_MISMATCH
// (the session was opened under another manifest) are 409, TOO_LARGE (the
// event's canonical form is over the limit) 413, the rest 400.
func rejectionError(r *pipeline.Rejection) *ErrorBody {
	return &ErrorBody{Error: ErrorDetail{Code: r.Reason, Message: r.Detail, ExpectedSeq: r.Expected}}
}

func rejectionStatus(reason string) int {
	switch reason {
	case pipeline.ReasonSeqConflict, pipeline.ReasonSeqGap, pipeline.ReasonSeqStale, pipeline.ReasonManifestMismatch:
		return http.StatusConflict
	case envelope.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case pipeline.ReasonApprovalUnauthenticated:
		// The decider refused the gateway's own grant: it checks with
		// another approval secret than this gateway signs with.
		return http.StatusForbidden
	}
	return http.StatusBadRequest
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":{"code":"INTERNAL","message":"encode response"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	defer BoundWrite(w, len(b))()
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// BoundWrite gives the answer of n bytes about to be written to w a write
// deadline, and returns the function that clears it once written. The
// servers have no WriteTimeout (a request may wait for an approval far
// longer than any write should take), so each answer gets its own: a
// client that does not read it holds no handler, and the answer's memory,
// for long. Cleared afterwards: the connection's next request must not
// inherit it.
func BoundWrite(w http.ResponseWriter, n int) (clear func()) {
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout(n)))
	return func() { _ = rc.SetWriteDeadline(time.Time{}) }
}

// An answer of n bytes may take answerWriteTime plus one second per
// answerWriteRate bytes to write (a client reading at least 64 KiB/s).
var answerWriteTime, answerWriteRate = 30 * time.Second, 64 << 10

func writeTimeout(n int) time.Duration {
	return answerWriteTime + time.Duration(n/answerWriteRate)*time.Second
}

func writeError(w http.ResponseWriter, err error) {
	var ae *apiError
	switch {
	case errors.As(err, &ae):
	case errors.Is(err, context.Canceled):
		// The client went away or the gateway is stopping: not a fault
		// of the gateway's, and not counted as one (5xx INTERNAL).
		st, d := eventError(err)
		ae = errf(st, d.Code, "%s", d.Message)
	default:
		ae = errf(http.StatusInternalServerError, CodeInternal, "%v", err)
	}
	if ae.RetryAfter > 0 {
		secs := int((ae.RetryAfter + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
	}
	writeJSON(w, ae.Status, ErrorBody{Error: ErrorDetail{Code: ae.Code, Message: ae.Message}})
}
