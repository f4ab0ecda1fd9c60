package mcpproxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// JSON-RPC 2.0 error codes the proxy answers with. CodeDenied and
// CodeApprovalRequired are the proxy's own (the JSON-RPC range
// -32000..-32099 is reserved for implementation-defined server errors);
// docs/mcp-proxy.md documents their data.
const (
	CodeParseError     = -32700
	CodeInvalidRequest = -32600
	CodeMethodNotFound = -32601
	CodeInvalidParams  = -32602
	CodeInternalError  = -32603
	// CodeDenied: Aegis did not let the call through (a deny decision, or
	// no decision in time); data.reason is the stable reason code.
	CodeDenied = -32000
	// CodeApprovalRequired: the call needs an operator's approval;
	// data.approval.token settles it (aegisctl approve), after which the
	// same call (same tool and arguments) goes through.
	CodeApprovalRequired = -32001
)

// message is one JSON-RPC 2.0 message: a request (Method and ID), a
// notification (Method, no ID) or a response (ID with Result or Error).
// Params and Result stay raw: the proxy forwards what it does not read.
type message struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id,omitempty"`
	Method  string          `json:"method,omitempty"`
	Params  json.RawMessage `json:"params,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   *rpcError       `json:"error,omitempty"`
}

// rpcError is a JSON-RPC error object.
type rpcError struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data,omitempty"`
}

func (e *rpcError) Error() string { return fmt.Sprintf("json-rpc error %d: %s", e.Code, e.Message) }

func (m *message) isRequest() bool      { return m.Method != "" && len(m.ID) > 0 }
func (m *message) isNotification() bool { return m.Method != "" && len(m.ID) == 0 }
func (m *message) isResponse() bool     { return m.Method == "" && len(m.ID) > 0 }

// errBatch reports a JSON array: JSON-RPC batches are not part of MCP
// since protocol revision 2025-06-18.
var errBatch = errors.New("JSON-RPC batches are not supported")

// parseMessage decodes one JSON-RPC message. The error is a parse error
// (CodeParseError) or an invalid request (CodeInvalidRequest).
func parseMessage(b []byte) (*message, *rpcError) {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '[' {
		return nil, &rpcError{Code: CodeInvalidRequest, Message: errBatch.Error()}
	}
	var m message
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, &rpcError{Code: CodeParseError, Message: "parse error: " + err.Error()}
	}
	if m.JSONRPC != "2.0" {
		return nil, &rpcError{Code: CodeInvalidRequest, Message: `jsonrpc must be "2.0"`}
	}
	if string(m.ID) == "null" {
		m.ID = nil
	}
	if m.Method == "" && len(m.ID) == 0 {
		return nil, &rpcError{Code: CodeInvalidRequest, Message: "neither a request, a notification nor a response"}
	}
	if m.Method != "" && (m.Result != nil || m.Error != nil) {
		// JSON-RPC 2.0: a request carries no result or error. Forwarded,
		// they would reach the server as part of a decided request.
		return nil, &rpcError{Code: CodeInvalidRequest, Message: "a request or notification with a result or error member"}
	}
	if m.isResponse() && (m.Result != nil) == (m.Error != nil) {
		// JSON-RPC 2.0: a response carries a result or an error, not
		// both. Passed on, a result beside an error would reach the agent
		// past what the proxy records and bounds of an error answer.
		return nil, &rpcError{Code: CodeInvalidRequest, Message: "a response without exactly one of result and error"}
	}
	return &m, nil
}

// errorResponse is the response to request id with an error.
func errorResponse(id json.RawMessage, code int, msg string, data any) *message {
	e := &rpcError{Code: code, Message: msg}
	if data != nil {
		e.Data, _ = json.Marshal(data)
	}
	if len(id) == 0 {
		id = json.RawMessage("null")
	}
	return &message{JSONRPC: "2.0", ID: id, Error: e}
}

func encode(m *message) []byte {
	b, _ := json.Marshal(m)
	return b
}

// readLine reads one line (with its newline, if any) of at most max bytes.
// A longer line is read to its end and discarded: long reports it, and the
// reader is positioned at the next line. err is the reader's (io.EOF at
// the end, with the last partial line).
func readLine(r *bufio.Reader, max int64) (line []byte, long bool, err error) {
	for {
		chunk, err := r.ReadSlice('\n')
		if !long {
			if int64(len(line)+len(chunk)) > max {
				long, line = true, nil
			} else {
				line = append(line, chunk...)
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return line, long, err
	}
}
