package archtest

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// pkg is what go list says of one package.
type pkg struct {
	ImportPath string
	Imports    []string // direct
	Deps       []string // all, transitively
	Standard   bool
}

// listPackages runs go list -deps -json over the module.
func listPackages(t *testing.T) map[string]pkg {
	t.Helper()
	goCmd := os.Getenv("GO")
	if goCmd == "" {
		goCmd = "go"
	}
	cmd := exec.Command(goCmd, "list", "-deps", "-json", "fanout/...")
	cmd.Dir = "../.."
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("go list: %v\n%s", err, errOut.String())
	}
	pkgs := map[string]pkg{}
	dec := json.NewDecoder(&out)
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs[p.ImportPath] = p
	}
	return pkgs
}

// under reports whether path is prefix or a package below it.
func under(path, prefix string) bool { return path == prefix || strings.HasPrefix(path, prefix+"/") }

// rule forbids packages that from matches to import what to matches; direct
// rules look at a package's own imports, the others at everything it
// pulls in.
type rule struct {
	name   string
	from   func(string) bool
	to     func(string) bool
	direct bool
}

// rules are docs/ARCHITECTURE.md's, as the compiler cannot say them.
var rules = []rule{
	{name: "dispatch knows calls, not fanout: it imports nothing of fanout outside dispatch/",
		from: func(p string) bool { return under(p, "fanout/dispatch") },
		to:   func(p string) bool { return under(p, "fanout") && !under(p, "fanout/dispatch") }},
	{name: "no net/http inside dispatch/",
		from:   func(p string) bool { return under(p, "fanout/dispatch") },
		to:     func(p string) bool { return p == "net/http" },
		direct: true},
	{name: "destination and webhook import nothing under internal/",
		from: func(p string) bool { return under(p, "fanout/destination") || under(p, "fanout/webhook") },
		to:   func(p string) bool { return under(p, "fanout/internal") }},
	{name: "dispatch, destination and webhook import nothing under internal/ (dispatch's own internal packages aside)",
		from: func(p string) bool { return under(p, "fanout/dispatch") },
		to:   func(p string) bool { return under(p, "fanout/internal") }},
	{name: "webhook is below destination: it does not import it",
		from: func(p string) bool { return under(p, "fanout/webhook") },
		to:   func(p string) bool { return under(p, "fanout/destination") }},
	{name: "the HTTP layer calls the service: it imports neither dispatch nor a driver",
		from:   func(p string) bool { return under(p, "fanout/internal/httpapi") || under(p, "fanout/internal/console") },
		to:     func(p string) bool { return under(p, "fanout/dispatch") },
		direct: true},
	{name: "the service is below the HTTP layer and the app: it imports neither",
		from: func(p string) bool { return under(p, "fanout/internal/service") },
		to: func(p string) bool {
			return under(p, "fanout/internal/httpapi") || under(p, "fanout/internal/app") || under(p, "fanout/internal/console")
		}},
	{name: "the HTTP layer is below the app: it does not import it",
		from: func(p string) bool { return under(p, "fanout/internal/httpapi") || under(p, "fanout/internal/console") },
		to:   func(p string) bool { return under(p, "fanout/internal/app") }},
	{name: "sink (the broker kinds) imports nothing under internal/ nor destination: destination is above it",
		from: func(p string) bool { return under(p, "fanout/sink") },
		to:   func(p string) bool { return under(p, "fanout/internal") || under(p, "fanout/destination") }},
	{name: "no broker kind (their client libraries) is imported by the HTTP layer",
		from: func(p string) bool { return under(p, "fanout/internal/httpapi") || under(p, "fanout/internal/console") },
		to: func(p string) bool {
			return under(p, "fanout/sink/natssink") || under(p, "fanout/sink/redissink") || under(p, "fanout/sink/amqpsink") ||
				under(p, "fanout/sink/kafkasink") || under(p, "fanout/sink/kinds") || under(p, "fanout/sink/sqssink") ||
				under(p, "fanout/sink/snssink") || under(p, "fanout/sink/ebsink") || under(p, "fanout/sink/s3sink") ||
				under(p, "fanout/sink/pubsubsink")
		}},
	{name: "the drivers are chosen by the app alone: no library package imports one",
		from: func(p string) bool {
			return under(p, "fanout/destination") || under(p, "fanout/webhook") || under(p, "fanout/internal/service") ||
				under(p, "fanout/internal/httpapi") || p == "fanout/dispatch"
		},
		to: func(p string) bool {
			return under(p, "fanout/dispatch/dispatchsqlite") || under(p, "fanout/dispatch/dispatchpg")
		}},
}

// TestLayering checks every rule against every package of the module.
func TestLayering(t *testing.T) {
	pkgs := listPackages(t)
	checked := 0
	for _, r := range rules {
		for path, p := range pkgs {
			if p.Standard || !r.from(path) {
				continue
			}
			checked++
			imports := p.Deps
			if r.direct {
				imports = p.Imports
			}
			for _, imp := range imports {
				if r.to(imp) {
					t.Errorf("%s imports %s: %s", path, imp, r.name)
				}
			}
		}
	}
	for _, must := range []string{"fanout/dispatch", "fanout/webhook", "fanout/internal/service", "fanout/internal/httpapi", "fanout/internal/app"} {
		if pkgs[must].ImportPath == "" {
			t.Fatalf("go list did not list %s, which the rules are about", must)
		}
	}
	if checked == 0 {
		t.Fatalf("go list found none of the packages the rules are about (%d checked)", checked)
	}
}
