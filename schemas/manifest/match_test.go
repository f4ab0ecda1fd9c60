package manifest

import "testing"

func TestNetAllows(t *testing.T) {
	n := Net{Domains: []string{"api.example.com", "*.wikipedia.org", "localhost"}}
	tests := []struct {
		name string
		host string
		want bool
	}{
		{"exact", "api.example.com", true},
		{"exact: other sub-domain", "www.example.com", false},
		{"exact: apex of the entry", "example.com", false},
		{"exact: deeper name", "v1.api.example.com", false},
		{"exact: single label", "localhost", true},
		{"suffix: one label", "en.wikipedia.org", true},
		{"suffix: two labels", "m.en.wikipedia.org", true},
		{"suffix: apex", "wikipedia.org", false},
		{"suffix: same characters, other domain", "badwikipedia.org", false},
		{"suffix: other TLD", "en.wikipedia.org.evil.com", false},
		{"case-insensitive", "API.Example.COM", true},
		{"case-insensitive suffix", "EN.WIKIPEDIA.ORG", true},
		{"one trailing dot", "api.example.com.", true},
		{"one trailing dot on suffix", "en.wikipedia.org.", true},
		{"two trailing dots", "api.example.com..", false},
		{"empty", "", false},
		{"dot", ".", false},
		{"leading dot", ".wikipedia.org", false},
		{"empty label under suffix", "a..wikipedia.org", false},
		{"underscore label under suffix", "_dmarc.wikipedia.org", true},
		{"with port", "api.example.com:443", false},
		{"URL", "https://api.example.com", false},
		{"wildcard as a host", "*.wikipedia.org", false},
		{"non-ASCII case folding is not applied", "\u212Aocalhost", false}, // Kelvin sign
		{"non-ASCII", "en.wikipedia.org\u00e9", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := n.Allows(tt.host); got != tt.want {
				t.Errorf("Allows(%q) = %v, want %v", tt.host, got, tt.want)
			}
		})
	}
	if (Net{}).Allows("example.com") {
		t.Error("an empty domain list allowed a host")
	}
}

func BenchmarkNetAllows(b *testing.B) {
	n := Net{Domains: []string{"api.example.com", "github.com", "*.github.com", "packages.example.org", "*.wikipedia.org"}}
	b.ReportAllocs()
	for b.Loop() {
		if !n.Allows("en.wikipedia.org") {
			b.Fatal("denied")
		}
	}
}
