//go:build race

package test

// raceEnabled builds the agent under test with the race detector when the
// tests run with it, so a data race in the real process fails the run too.
const raceEnabled = true
