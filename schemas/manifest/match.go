package manifest

import "strings"

// Allows reports whether egress to host is declared by n.Domains.
//
// host is a bare host name as a request names it (no scheme, port or path).
// Matching is ASCII case-insensitive and ignores one trailing dot of host.
// An exact entry ("api.example.com") matches that name only. A suffix entry
// ("*.example.com") matches any name that ends in ".example.com" and has
// at least one more label ("a.example.com", "a.b.example.com"), but not the
// apex ("example.com") nor a name that merely ends in the same characters
// ("badexample.com"). A host that is not a host name after normalization
// (empty, an empty label, any character but a-z, 0-9, "-" and "_") matches
// nothing. These are the semantics of the default policy bundle
// (decider/policy/bundle), which the decider applies.
//
// Allows is safe for concurrent use and does not allocate unless host has
// upper-case letters.
func (n Net) Allows(host string) bool {
	host = strings.TrimSuffix(asciiLower(host), ".")
	if !requestHost(host) {
		return false
	}
	for _, d := range n.Domains {
		d = asciiLower(d)
		if suffix, ok := strings.CutPrefix(d, "*"); ok {
			// suffix is ".example.com": host needs a non-empty label before it.
			if len(host) > len(suffix) && strings.HasSuffix(host, suffix) && strings.HasPrefix(suffix, ".") {
				return true
			}
			continue
		}
		if host == d {
			return true
		}
	}
	return false
}

// asciiLower lower-cases A-Z only. Unicode case folding is deliberately not
// applied: it would map, for example, the Kelvin sign to "k" and let a
// non-ASCII name match an ASCII entry.
func asciiLower(s string) string {
	i := strings.IndexFunc(s, func(r rune) bool { return 'A' <= r && r <= 'Z' })
	if i < 0 {
		return s
	}
	b := []byte(s)
	for j := i; j < len(b); j++ {
		if c := b[j]; 'A' <= c && c <= 'Z' {
			b[j] = c + ('a' - 'A')
		}
	}
	return string(b)
}

// requestHost reports whether h (lower-cased, without its trailing dot) is
// a host name a request may name: non-empty labels of a-z, 0-9, "-" and "_".
// It is laxer than the rule for manifest entries, which never contain "_",
// so the extra names it admits can only match suffix entries.
func requestHost(h string) bool {
	if h == "" {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" {
			return false
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
