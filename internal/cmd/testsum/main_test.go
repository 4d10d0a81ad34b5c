package main

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from what summarise prints")

// TestSummarise feeds summarise recorded go test -json streams and checks
// what it prints against testdata/NAME.golden (reviewed by hand; -update
// rewrites them), and what it records.
func TestSummarise(t *testing.T) {
	tests := []struct {
		name     string
		skipped  []string
		failures []string
		failed   bool
	}{
		{
			// A test that passes, a skip, a failing subtest beside a
			// skipped one, a build failure, a package without tests.
			name:     "mixed",
			skipped:  []string{"tj TestSkip: a_test.go:4: needs root: nope", "tj TestFail/SubSkip: a_test.go:7: no db"},
			failures: []string{"tj/b [build failed]", "tj TestFail/Sub"},
			failed:   true,
		},
		{
			// -timeout 1s: the hanging test never ends; a parallel test
			// waits behind it, never resumed: neither failed nor skipped.
			name:     "timeout",
			failures: []string{"tj2 TestHang"},
			failed:   true,
		},
		{
			name:    "pass",
			skipped: []string{"fanout/x TestRoot: x_test.go:9: needs root (chattr +i)"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in, err := os.Open(filepath.Join("testdata", tc.name+".jsonl"))
			if err != nil {
				t.Fatal(err)
			}
			defer in.Close()
			var out strings.Builder
			sum := summarise(in, &out)
			golden := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(out.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if out.String() != string(want) {
				t.Errorf("summarise printed:\n%s\nwant (%s):\n%s", out.String(), golden, want)
			}
			if !slices.Equal(sum.skipped, tc.skipped) {
				t.Errorf("skipped %q, want %q", sum.skipped, tc.skipped)
			}
			if !slices.Equal(sum.failures, tc.failures) {
				t.Errorf("failures %q, want %q", sum.failures, tc.failures)
			}
			if sum.failed != tc.failed {
				t.Errorf("failed = %v, want %v", sum.failed, tc.failed)
			}
		})
	}
}
