//go:build race

package transform

// raceMemoryFactor: a race-detector build (the tests') needs several times
// a plain build's memory for the detector's own bookkeeping, which the
// kernel counts against a worker's limit.
const raceMemoryFactor = 8
