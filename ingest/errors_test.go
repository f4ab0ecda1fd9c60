package ingest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

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
		{brokerError(errors.New("no leader")), http.StatusServiceUnavailable, CodeBrokerUnavailable},
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
