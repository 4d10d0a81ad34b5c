//go:build !race

package transform

const raceMemoryFactor = 1
