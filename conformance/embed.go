package conformance

import (
	"embed"
	"io/fs"
)

//go:embed packs/*.yaml
var packFS embed.FS

// Builtin returns the packs shipped in conformance/packs.
func Builtin() ([]*Pack, error) {
	return LoadFS(fs.FS(packFS), "packs")
}
