package sqlstore

import (
	"crypto/sha256"
	"database/sql/driver"
	"encoding/hex"
	"fmt"
	"sync"

	"modernc.org/sqlite"
)

// RegisterSHA256Hex adds the SQL function sha256_hex(text), the lower-case
// hex SHA-256 of its UTF-8 argument, to every SQLite connection opened
// afterwards in this process. Tools that edit a store as an attacker who
// knows the chain format would (the conformance suite's tamper steps) use
// it to recompute a record's hash; the stores never call it. Registering
// more than once is a no-op.
func RegisterSHA256Hex() error { return registerSHA256Hex() }

var registerSHA256Hex = sync.OnceValue(func() error {
	return sqlite.RegisterDeterministicScalarFunction("sha256_hex", 1, func(_ *sqlite.FunctionContext, args []driver.Value) (driver.Value, error) {
		var b []byte
		switch v := args[0].(type) {
		case string:
			b = []byte(v)
		case []byte:
			b = v
		default:
			return nil, fmt.Errorf("sha256_hex: a text argument, got %T", v)
		}
		sum := sha256.Sum256(b)
		return hex.EncodeToString(sum[:]), nil
	})
})
