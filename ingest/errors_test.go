package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/schemas/envelope"
)

// TestEventErrorStatus: a request canceled or out of time is not the
// client's malformed JSON.
func TestEventErrorStatus(t *testing.T) {
	for _, c := range []struct {
		err    error
		status int
		code   string
	}{
		{&envelope.Error{Code: envelope.CodeTooLarge}, http.StatusRequestEntityTooLarge, envelope.CodeTooLarge},
		{&envelope.Error{Code: envelope.CodeUnknownField}, http.StatusBadRequest, envelope.CodeUnknownField},
		{(&Server{log: slog.New(slog.DiscardHandler)}).brokerError(errors.New("no leader")), http.StatusServiceUnavailable, CodeBrokerUnavailable},
		{context.Canceled, http.StatusServiceUnavailable, CodeCanceled},
		{fmt.Errorf("wait: %w", context.Canceled), http.StatusServiceUnavailable, CodeCanceled},
		{fmt.Errorf("wait: %w", context.DeadlineExceeded), http.StatusGatewayTimeout, CodeDecisionTimeout},
		{errors.New("invalid character 'x'"), http.StatusBadRequest, envelope.CodeInvalidJSON},
	} {
		status, d := eventError(c.err)
		if status != c.status || d.Code != c.code {
			t.Errorf("eventError(%v) = %d %s, want %d %s", c.err, status, d.Code, c.status, c.code)
		}
	}
}

// TestRejectionStatus: the decider's rejections of what the gateway
// published map to the status the same fault gets at the gateway.
func TestRejectionStatus(t *testing.T) {
	for reason, want := range map[string]int{
		pipeline.ReasonSeqConflict: http.StatusConflict,
		pipeline.ReasonSeqGap:      http.StatusConflict,
		envelope.CodeTooLarge:      http.StatusRequestEntityTooLarge,
		envelope.CodeInvalidField:  http.StatusBadRequest,
	} {
		if got := rejectionStatus(reason); got != want {
			t.Errorf("rejectionStatus(%s) = %d, want %d", reason, got, want)
		}
	}
}

// TestWriteErrorCanceled: a canceled request that reaches writeError (the
// client went away, the gateway is stopping) is 503 REQUEST_CANCELED, as
// on the event paths, not a 500 INTERNAL counted as the gateway's fault.
func TestWriteErrorCanceled(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
		code   string
	}{
		{fmt.Errorf("store: %w", context.Canceled), http.StatusServiceUnavailable, CodeCanceled},
		{errors.New("boom"), http.StatusInternalServerError, CodeInternal},
	} {
		w := httptest.NewRecorder()
		writeError(w, tc.err)
		var body ErrorBody
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || w.Code != tc.status || body.Error.Code != tc.code {
			t.Errorf("%v: %d %s (%v), want %d %s", tc.err, w.Code, w.Body.String(), err, tc.status, tc.code)
		}
	}
}
