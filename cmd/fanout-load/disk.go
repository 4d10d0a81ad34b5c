package main

import (
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"sort"
)

// diskReport is what fanout's data directory holds after a run, per event:
// once as found, with fanout still running after the drain (for SQLite the
// write-ahead log is then not yet checkpointed, and nothing outside fanout
// can checkpoint it), and again once fanout has stopped cleanly.
type diskReport struct {
	Events       int64 `json:"events"`
	Destinations int   `json:"destinations"`
	// PayloadBytes is the size of each event's JSON, as sent.
	PayloadBytes int `json:"payload_bytes_per_event"`

	RunningBytes    int64            `json:"running_bytes"`
	RunningPerEvent float64          `json:"running_bytes_per_event"`
	RunningFiles    map[string]int64 `json:"running_files,omitempty"`
	StoppedBytes    int64            `json:"stopped_bytes"`
	StoppedPerEvent float64          `json:"stopped_bytes_per_event"`
	StoppedFiles    map[string]int64 `json:"stopped_files,omitempty"`

	// OverheadPerDelivery is (bytes per event - payload) / destinations,
	// after the clean stop: what each delivery costs on disk beyond one copy
	// of the payload (per event when there is no destination).
	OverheadPerDelivery float64 `json:"overhead_bytes_per_delivery"`
	// Limit is 1.3 x payload + 200 B per delivery, the bound.
	Limit       float64 `json:"limit_bytes_per_event"`
	WithinLimit bool    `json:"within_limit"`
}

// dirSize returns the sum of the sizes of the regular files under dir, and
// each file's size by its path relative to dir.
func dirSize(dir string) (int64, map[string]int64, error) {
	var total int64
	files := map[string]int64{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		files[rel] = info.Size()
		total += info.Size()
		return nil
	})
	return total, files, err
}

// newDiskReport fills the per-event figures of the sizes measured.
func newDiskReport(events int64, destinations, payload int, running, stopped int64) *diskReport {
	d := &diskReport{Events: events, Destinations: destinations, PayloadBytes: payload,
		RunningBytes: running, StoppedBytes: stopped}
	d.compute()
	return d
}

func (d *diskReport) compute() {
	if d.Events <= 0 {
		return
	}
	d.RunningPerEvent = float64(d.RunningBytes) / float64(d.Events)
	d.StoppedPerEvent = float64(d.StoppedBytes) / float64(d.Events)
	d.OverheadPerDelivery = (d.StoppedPerEvent - float64(d.PayloadBytes)) / float64(max(d.Destinations, 1))
	d.Limit = 1.3*float64(d.PayloadBytes) + 200*float64(d.Destinations)
	d.WithinLimit = d.StoppedPerEvent <= d.Limit
}

func (d *diskReport) print(w io.Writer) {
	fmt.Fprintf(w, "  disk       %d events of %d B to %d destinations: %.0f B per event running (%s), %.0f B after a clean stop (%s)\n",
		d.Events, d.PayloadBytes, d.Destinations, d.RunningPerEvent, fileList(d.RunningFiles), d.StoppedPerEvent, fileList(d.StoppedFiles))
	within := "within"
	if !d.WithinLimit {
		within = "over"
	}
	fmt.Fprintf(w, "             (B per event - payload) per destination: %.0f B; %s 1.3 x payload + 200 B per delivery = %.0f B\n",
		d.OverheadPerDelivery, within, d.Limit)
}

// fileList names the largest files, with their sizes.
func fileList(files map[string]int64) string {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return files[names[i]] > files[names[j]] })
	s := ""
	for i, n := range names {
		if i == 4 {
			s += fmt.Sprintf(", %d more", len(names)-i)
			break
		}
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s %s", n, mib(files[n]))
	}
	return s
}

func mib(b int64) string {
	if b < 1<<20 {
		return fmt.Sprintf("%.0f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

// medianDisk picks, of several runs, the disk report with the median bytes
// per event after the clean stop.
func medianDisk(runs []*report) *diskReport {
	var ds []*diskReport
	for _, r := range runs {
		if r.Disk != nil {
			ds = append(ds, r.Disk)
		}
	}
	if len(ds) == 0 {
		return nil
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].StoppedPerEvent < ds[j].StoppedPerEvent })
	return ds[len(ds)/2]
}
