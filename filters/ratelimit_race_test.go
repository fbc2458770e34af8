//go:build race

package filters_test

// raceEnabled lets the memory test flood fewer addresses under the race detector, which is slower.
const raceEnabled = true
