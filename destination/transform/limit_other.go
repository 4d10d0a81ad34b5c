//go:build !linux

package transform

import "os/exec"

// setHardMemoryLimit has no hard limit to set outside Linux: a worker has
// Go's soft limit only, and a program that allocates without end may take
// the machine's memory before its worker dies (fanout still lives).
func setHardMemoryLimit(int64) error { return nil }

const hardMemoryLimit = false

// tieToParent: a worker notices its parent's end when its input closes.
func tieToParent(*exec.Cmd) {}

func keepInheritedFiles() {}

func lowerPriority() {}
