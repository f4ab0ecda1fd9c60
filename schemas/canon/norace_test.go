//go:build !race

package canon

// raceEnabled is true when the race detector is on; sync.Pool then drops
// pooled items at random, so allocation counts are not meaningful.
const raceEnabled = false
