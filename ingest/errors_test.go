package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
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
