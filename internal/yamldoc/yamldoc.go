// Package yamldoc reads the project's YAML files (aegisd's --config, the
// conformance packs) with go.yaml.in/yaml/v3, the only package of ours that
// imports it: exactly one document, every key known to the target.
package yamldoc

import (
	"bytes"
	"errors"
	"io"

	"go.yaml.in/yaml/v3"
)

// Node is a YAML node, for types that decode themselves (UnmarshalYAML).
type Node = yaml.Node

// Node kinds, for UnmarshalYAML methods.
const ScalarNode = yaml.ScalarNode

// ErrEmpty: the input holds no document (it is empty or only comments).
var ErrEmpty = errors.New("no YAML document")

// ErrMoreDocuments: the input holds a second document ("---"), which
// would otherwise be ignored, its keys unchecked. Empty documents after
// the first are allowed.
var ErrMoreDocuments = errors.New("more than one YAML document")

// DecodeStrict decodes the one YAML document in data into v. A key that v
// has no field for is an error, and so is a second document; ErrEmpty
// says that data holds no document at all (v is then unchanged).
func DecodeStrict(data []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return ErrEmpty
		}
		return err
	}
	for {
		var more any
		err := dec.Decode(&more)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil || more != nil {
			return ErrMoreDocuments
		}
	}
}
