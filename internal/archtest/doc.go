// Package archtest holds the test that keeps fanout's packages apart: the
// layering rules of docs/ARCHITECTURE.md, checked against what the go
// command says each package imports. It has no code of its own.
package archtest
