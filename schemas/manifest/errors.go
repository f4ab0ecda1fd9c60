package manifest

import (
	"errors"
	"fmt"
	"strings"
)

// ErrUnknown is wrapped by every Resolve error: the tenant has no manifest
// under the requested reference. The decider maps it to the
// MANIFEST_UNKNOWN reason code and denies every tool call of the session.
var ErrUnknown = errors.New("manifest: unknown")

// ErrInvalid is matched (errors.Is) by every *ValidationError: the document
// is not a valid manifest.
var ErrInvalid = errors.New("manifest: invalid")

// Code classifies a FieldError. Codes are stable: tools and CI scripts may
// match on them. docs/manifest.md lists them.
type Code string

// The field error codes.
const (
	// CodeSyntax: the document is not well-formed JSON, is not UTF-8, is too
	// large, or has data after the top-level object.
	CodeSyntax Code = "syntax"
	// CodeUnknownField: an object has a key the schema does not define
	// (keys are case-sensitive).
	CodeUnknownField Code = "unknown_field"
	// CodeDuplicateKey: an object has the same key twice.
	CodeDuplicateKey Code = "duplicate_key"
	// CodeWrongType: a value has the wrong JSON type (null included).
	CodeWrongType Code = "wrong_type"
	// CodeRequired: a required value is missing or empty.
	CodeRequired Code = "required"
	// CodeInvalidValue: a value has the right type but a bad form.
	CodeInvalidValue Code = "invalid_value"
	// CodeDuplicateValue: a list names the same entry twice.
	CodeDuplicateValue Code = "duplicate_value"
	// CodeOutOfRange: a number or a length is outside its allowed range.
	CodeOutOfRange Code = "out_of_range"
	// CodeUndeclaredTool: approval_required names a tool that
	// permissions.tools does not declare.
	CodeUndeclaredTool Code = "undeclared_tool"
	// CodeNameMismatch: a registry file's name does not match the manifest's
	// name (or name@version).
	CodeNameMismatch Code = "name_mismatch"
	// CodeConflict: two registry entries of one tenant have the same name
	// and version (or versions of equal precedence) but different content.
	CodeConflict Code = "conflict"
)

// FieldError is one problem with one value of a manifest.
type FieldError struct {
	// Path locates the value: dotted keys and [index] for list elements,
	// e.g. "permissions.net.domains[2]". It is empty when the whole
	// document is at fault (a syntax error).
	Path string
	// Code classifies the problem.
	Code Code
	// Problem says what is wrong, for people.
	Problem string
}

// Error implements error.
func (e FieldError) Error() string {
	if e.Path == "" {
		return e.Problem
	}
	return e.Path + ": " + e.Problem
}

// ValidationError lists every problem found in one manifest, in document
// order for decoding problems and field order for validation problems.
// errors.Is(err, ErrInvalid) holds for it.
type ValidationError struct {
	Errors []FieldError
}

// Error implements error. It names every problem.
func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString(ErrInvalid.Error())
	for i, fe := range e.Errors {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(fe.Error())
	}
	return b.String()
}

// Is reports whether target is ErrInvalid.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

// SourceError is a problem with one manifest source: a file or directory for
// LoadDir, an entry such as byTenant["acme"][2] for NewRegistry. Err is
// usually a *ValidationError.
type SourceError struct {
	Source string
	Err    error
}

// Error implements error.
func (e *SourceError) Error() string { return e.Source + ": " + e.Err.Error() }

// Unwrap returns the cause.
func (e *SourceError) Unwrap() error { return e.Err }

// LoadError is returned by LoadDir and NewRegistry: it lists every bad
// source, so that an operator fixes a directory in one pass. errors.As finds
// the individual *SourceError and *ValidationError values.
type LoadError struct {
	Problems []*SourceError
}

// Error implements error, one problem per line after the first.
func (e *LoadError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "manifest registry: %d bad source(s)", len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n\t")
		b.WriteString(p.Error())
	}
	return b.String()
}

// Unwrap returns the individual problems.
func (e *LoadError) Unwrap() []error {
	errs := make([]error, len(e.Problems))
	for i, p := range e.Problems {
		errs[i] = p
	}
	return errs
}
