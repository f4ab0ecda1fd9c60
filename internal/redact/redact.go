// Package redact removes secrets from what aegisd and aegisctl print.
package redact

import (
	"net/url"
	"strings"
)

// URL returns raw fit for logs and error messages: the password of its
// user info replaced by REDACTED, its query and fragment (where tokens
// travel) dropped. A string that does not parse as a URL is not shown,
// only its scheme: it may hold a password that the parser could not
// separate.
func URL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		scheme, _, ok := strings.Cut(raw, ":")
		if !ok || strings.ContainsAny(scheme, "/@?#") {
			scheme = "?"
		}
		return scheme + ":(unparsable URL, not shown)"
	}
	if u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "REDACTED")
		}
	}
	u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = "", false, "", ""
	return u.String()
}
