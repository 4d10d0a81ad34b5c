// Package image holds the tests of fanout's container image (make
// image-test): what the image says of itself, and a run of it where the
// container runtime can start one.
package image

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// image is the image under test, or the test is skipped.
func image(t *testing.T) string {
	t.Helper()
	img := os.Getenv("FANOUT_IMAGE")
	if img == "" {
		t.Skip("set FANOUT_IMAGE to an image built by make image (make image-test does)")
	}
	if _, err := exec.LookPath("podman"); err != nil {
		t.Skip("no podman here (apt-get install podman)")
	}
	return img
}

func podman(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("podman", args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestImage_Inspect checks what the image says of itself, with no
// container runtime: it runs as a user of its own, starts fanout, checks
// its health with fanout healthcheck, listens on 8000, keeps its data in a
// volume; and the binary in it runs.
func TestImage_Inspect(t *testing.T) {
	img := image(t)
	out, err := podman(t, "image", "inspect", "--format", "json", img)
	if err != nil {
		t.Fatalf("podman image inspect: %v\n%s", err, out)
	}
	var inspected []struct {
		Config struct {
			User         string
			Entrypoint   []string
			Cmd          []string
			Env          []string
			ExposedPorts map[string]struct{}
			Volumes      map[string]struct{}
			Healthcheck  *struct{ Test []string } // docker's place
		}
		Healthcheck *struct{ Test []string } // podman's place
		Size        int64
	}
	if err := json.Unmarshal([]byte(out), &inspected); err != nil || len(inspected) != 1 {
		t.Fatalf("podman image inspect: %v\n%s", err, out)
	}
	c := inspected[0].Config
	if c.Healthcheck == nil {
		c.Healthcheck = inspected[0].Healthcheck
	}
	checks := []struct {
		what string
		ok   bool
		got  any
	}{
		{"run as 65532:65532, not root", c.User == "65532:65532", c.User},
		{"have /fanout as its entrypoint", slices.Equal(c.Entrypoint, []string{"/fanout"}), c.Entrypoint},
		{"listen on :8000 and keep its data in /data", slices.Contains(c.Env, "FANOUT_ADDR=:8000") && slices.Contains(c.Env, "FANOUT_DATA=/data"), c.Env},
		{"expose 8000/tcp", c.ExposedPorts != nil && hasKey(c.ExposedPorts, "8000/tcp"), c.ExposedPorts},
		{"have a volume at /data", hasKey(c.Volumes, "/data"), c.Volumes},
		{"have a HEALTHCHECK through fanout healthcheck", c.Healthcheck != nil && slices.Equal(c.Healthcheck.Test, []string{"CMD", "/fanout", "healthcheck"}), c.Healthcheck},
	}
	for _, ck := range checks {
		if !ck.ok {
			t.Errorf("the image does not %s: %v", ck.what, ck.got)
		}
	}
	t.Logf("image %s: %d MB", img, inspected[0].Size>>20)

	// The binary in it runs here: create a container (nothing runs), copy
	// the binary out, run it.
	id, err := podman(t, "create", img)
	if err != nil {
		t.Fatalf("podman create: %v\n%s", err, id)
	}
	defer func() { _, _ = podman(t, "rm", "-f", id) }()
	bin := filepath.Join(t.TempDir(), "fanout")
	if out, err := podman(t, "cp", id+":/fanout", bin); err != nil {
		t.Fatalf("podman cp: %v\n%s", err, out)
	}
	v, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(v), "fanout ") || !strings.Contains(string(v), "sqlite (modernc.org/sqlite") {
		t.Fatalf("the image's binary, run: %v\n%s", err, v)
	}
	if out, err := podman(t, "cp", id+":/etc/ssl/certs/ca-certificates.crt", t.TempDir()); err != nil {
		t.Errorf("the image has no CA bundle: %v\n%s", err, out)
	}
}

func hasKey(m map[string]struct{}, k string) bool { _, ok := m[k]; return ok }

// TestImage_Run runs the image as a user would, on the host's network (its
// destination is a receiver of this test on loopback): an event posted is
// delivered; stopped and started again on the same volume, fanout still
// has the event. Where the runtime cannot start a container (in some
// sandboxes crun cannot set RLIMIT_NPROC), it is skipped with the reason.
func TestImage_Run(t *testing.T) {
	img := image(t)
	var mu sync.Mutex
	got := map[string]string{}
	dest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got[r.Header.Get("webhook-id")] = string(b)
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer dest.Close()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	volume := fmt.Sprintf("fanout-image-test-%d", time.Now().UnixNano())
	defer func() { _, _ = podman(t, "volume", "rm", "-f", volume) }()
	name := volume
	start := func() {
		out, err := podman(t, "run", "-d", "--name", name, "--network", "host", "-v", volume+":/data",
			"-e", fmt.Sprintf("FANOUT_ADDR=127.0.0.1:%d", port), img,
			"--allow-network", "127.0.0.0/8", "--destination", dest.URL+"/hook")
		if err != nil {
			for _, why := range []string{"setrlimit", "Operation not permitted", "permission denied", "cannot"} {
				if strings.Contains(out, why) {
					reason := out
					for line := range strings.Lines(out) {
						if strings.HasPrefix(line, "Error:") {
							reason = strings.TrimSpace(line) // the runtime's own words, not podman's chatter
						}
					}
					t.Skipf("the container runtime cannot start a container here: %s", reason)
				}
			}
			t.Fatalf("podman run: %v\n%s", err, out)
		}
	}
	stop := func() {
		if out, err := podman(t, "stop", "-t", "30", name); err != nil {
			t.Fatalf("podman stop: %v\n%s", err, out)
		}
		if out, err := podman(t, "rm", name); err != nil {
			t.Fatalf("podman rm: %v\n%s", err, out)
		}
	}
	defer func() { _, _ = podman(t, "rm", "-f", name) }()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	ready := func() {
		deadline := time.Now().Add(30 * time.Second)
		for {
			if resp, err := http.Get(base + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return
				}
			}
			if time.Now().After(deadline) {
				logs, _ := podman(t, "logs", name)
				t.Fatalf("fanout in the container never became ready:\n%s", logs)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	start()
	ready()
	resp, err := http.Post(base+"/v1/event", "application/json", strings.NewReader(`{"type":"image.test"}`))
	if err != nil {
		t.Fatal(err)
	}
	var ev struct{ ID string }
	_ = json.NewDecoder(resp.Body).Decode(&ev)
	resp.Body.Close()
	if resp.StatusCode != 202 || ev.ID == "" {
		t.Fatalf("POST /v1/event: %d %+v", resp.StatusCode, ev)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		mu.Lock()
		body, ok := got[ev.ID]
		mu.Unlock()
		if ok {
			if body != `{"type":"image.test"}` {
				t.Fatalf("delivered %q", body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the event was not delivered")
		}
	}
	stop()
	start()
	ready()
	resp, err = http.Get(base + "/v1/events/" + ev.ID)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("after a restart on the same volume, GET /v1/events/%s: %d", ev.ID, resp.StatusCode)
	}
	stop()
}
