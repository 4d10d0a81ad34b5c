package service

import (
	"math"
	"sync"
	"time"

	"fanout/dispatch"
)

// This process's figures over the last hour, for the console's overview
// (GET /v1/stats): events accepted, deliveries by outcome, and the time from
// a delivery's creation (its event's arrival, or a replay) to its success,
// in 10-second buckets. They are held in memory, in a fixed ring: what one
// replica saw, gone at a restart. /metrics is the place for history.

const (
	statsBucket  = 10 * time.Second
	StatsBuckets = 360 // an hour
	// Latency is counted in a histogram of logarithmic bins, four per
	// doubling from 0.1 ms (a bin spans 19%), up to about 15 hours.
	latencyBins      = 120
	latencyBase      = 0.1 // ms
	latencyPerDouble = 4
)

// statsRing is the ring of buckets. Attempts are recorded under its lock
// (a few increments); ingest is not on it: the accepted counter is read
// when the ring moves on.
type statsRing struct {
	svc *Service
	now func() time.Time

	mu           sync.Mutex
	buckets      [StatsBuckets]statsBin
	lastAccepted int64
}

// statsBin is one bucket.
type statsBin struct {
	start                              int64 // unix seconds; 0 when unused
	accepted, delivered, retried, dead int64
	latency                            [latencyBins]uint32
	backlog                            int64 // the total backlog, when the console last read it; -1 unknown
}

func newStatsRing(svc *Service) *statsRing {
	return &statsRing{svc: svc, now: time.Now}
}

// bin returns the bucket of now, reset if it held an older one; the
// events accepted since the last call count in it. Callers hold mu.
func (r *statsRing) bin(now time.Time) *statsBin {
	start := now.Unix() - now.Unix()%int64(statsBucket/time.Second)
	b := &r.buckets[(start/int64(statsBucket/time.Second))%StatsBuckets]
	if b.start != start {
		*b = statsBin{start: start, backlog: -1}
	}
	acc := r.svc.Accepted.Load()
	b.accepted += acc - r.lastAccepted
	r.lastAccepted = acc
	return b
}

// record counts an attempt of a delivery (the runtime's OnAttempt).
func (r *statsRing) record(a dispatch.AttemptReport) {
	if a.Call == nil || a.Call.Function != r.svc.fns.PublishEvent.Name() {
		return
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.bin(now)
	switch {
	case a.Outcome == dispatch.StateDone:
		b.delivered++
		ms := float64(a.Started.Add(a.Duration).Sub(a.Call.CreatedAt)) / float64(time.Millisecond)
		b.latency[latencyBin(ms)]++
	case a.Outcome == dispatch.StateFailed:
		b.dead++
	case a.Outcome == dispatch.StatePending && !a.Snoozed:
		b.retried++
	}
}

func latencyBin(ms float64) int {
	if ms <= latencyBase {
		return 0
	}
	i := int(math.Log2(ms/latencyBase) * latencyPerDouble)
	return min(i, latencyBins-1)
}

// binMS is the upper bound of a bin, in milliseconds.
func binMS(i int) float64 { return latencyBase * math.Exp2(float64(i+1)/latencyPerDouble) }

// quantile of a histogram, as its bin's upper bound; NaN when empty.
func quantile(h *[latencyBins]uint32, q float64) float64 {
	var total uint64
	for _, n := range h {
		total += uint64(n)
	}
	if total == 0 {
		return math.NaN()
	}
	rank := uint64(math.Ceil(q * float64(total)))
	var seen uint64
	for i, n := range h {
		seen += uint64(n)
		if seen >= rank {
			return binMS(i)
		}
	}
	return binMS(latencyBins - 1)
}

// StatsView is GET /v1/stats.
type StatsView struct {
	// Scope says whose figures these are.
	Scope string    `json:"scope"`
	Now   time.Time `json:"now"`
	// BucketSeconds is the width of each point of Series.
	BucketSeconds int         `json:"bucket_seconds"`
	Series        statsSeries `json:"series"`
	// Rates are per second over the last full bucket and the current one.
	Rates        statsRates        `json:"rates"`
	Destinations []destinationStat `json:"destinations"`
	// Backlog is the deliveries waiting in the store (all replicas), as
	// of BacklogAge seconds ago.
	Backlog    int64      `json:"backlog"`
	BacklogAge float64    `json:"backlog_age_seconds"`
	StoreUp    bool       `json:"store_up"`
	Accepted   int64      `json:"accepted_total"`
	Retention  retention  `json:"retention"`
	Store      string     `json:"store"`
	Version    string     `json:"version"`
	Started    *time.Time `json:"started_at,omitempty"`
}

// statsSeries are columns, one value per bucket, oldest first; a latency
// is null where nothing was delivered, a backlog where nobody looked.
type statsSeries struct {
	Time      []int64    `json:"time"`
	Accepted  []float64  `json:"accepted_per_second"`
	Delivered []float64  `json:"delivered_per_second"`
	Retried   []float64  `json:"retried_per_second"`
	Dead      []float64  `json:"dead_per_second"`
	P50       []*float64 `json:"latency_p50_ms"`
	P99       []*float64 `json:"latency_p99_ms"`
	Backlog   []*int64   `json:"backlog"`
}

type statsRates struct {
	Accepted  float64  `json:"accepted_per_second"`
	Delivered float64  `json:"delivered_per_second"`
	Retried   float64  `json:"retried_per_second"`
	Dead      float64  `json:"dead_per_second"`
	P50       *float64 `json:"latency_p50_ms"`
	P99       *float64 `json:"latency_p99_ms"`
}

// destinationStat is a destination's health, for the overview.
type destinationStat struct {
	ID          string `json:"id"`
	URL         string `json:"url"`
	Description string `json:"description,omitempty"`
	// State is active, paused (by a person), breaker (paused by the
	// circuit breaker until BreakerUntil) or disabled.
	State        string     `json:"state"`
	Reason       string     `json:"reason,omitempty"`
	BreakerUntil *time.Time `json:"breaker_until,omitempty"`
	Backlog      int64      `json:"backlog"`
	InFlight     int        `json:"in_flight"`
	Limit        float64    `json:"concurrency_limit"`
	MaxLimit     int        `json:"max_concurrency"`
	Failures     int        `json:"failures_in_a_row"`
	// Throttled is how many of its deliveries wait on its throttle
	// (rate_limit): see throttleWaiting.
	Throttled int64 `json:"throttled"`
}

func ptr[T any](v T) *T { return &v }

func finite(v float64) *float64 {
	if math.IsNaN(v) {
		return nil
	}
	return ptr(math.Round(v*100) / 100)
}

// Stats returns this process's figures of the last hour and the state of
// each destination.
func (s *Service) Stats(now time.Time) *StatsView {
	pending, at, err := s.Backlog.Get(now)
	v := &StatsView{Scope: "this replica (its own figures since it started; the backlog is the store's, over all replicas)",
		Now: now.UTC(), BucketSeconds: int(statsBucket / time.Second), Accepted: s.Accepted.Load(),
		Retention: s.retentionView(now), StoreUp: err == nil && !at.IsZero(), Version: s.version, Store: s.storeName,
		Started: ptr(s.started)}
	if !at.IsZero() {
		v.BacklogAge = math.Round(now.Sub(at).Seconds()*10) / 10
	}
	for _, d := range s.Dests.List() {
		ks := s.rt.KeyStatus(d.ID)
		ds := destinationStat{ID: d.ID, URL: d.Address(), Description: d.Description, State: "active", Reason: d.Reason,
			Backlog: pending[d.ID], InFlight: ks.InFlight, Limit: ks.Limit, MaxLimit: d.MaxConcurrency, Failures: ks.Failures,
			Throttled: throttleWaiting(d, ks, pending[d.ID], now)}
		switch {
		case !d.Enabled:
			ds.State = "disabled"
		case d.Paused:
			ds.State = "paused"
		case d.CircuitOpenUntil != nil && now.Before(*d.CircuitOpenUntil):
			ds.State, ds.BreakerUntil = "breaker", d.CircuitOpenUntil
		}
		v.Destinations = append(v.Destinations, ds)
		v.Backlog += ds.Backlog
	}
	if v.Destinations == nil {
		v.Destinations = []destinationStat{}
	}
	r := s.stats
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := r.bin(now)
	if !at.IsZero() {
		cur.backlog = v.Backlog
	}
	step := int64(statsBucket / time.Second)
	ser := &v.Series
	var recent [latencyBins]uint32
	var recentN [4]int64
	for i := StatsBuckets - 1; i >= 0; i-- {
		start := cur.start - int64(i)*step
		b := &r.buckets[(start/step)%StatsBuckets]
		span := float64(step)
		if b == cur {
			span = math.Max(1, float64(now.Unix()-start)+float64(now.Nanosecond())/1e9)
		}
		ser.Time = append(ser.Time, start)
		if b.start != start {
			ser.Accepted, ser.Delivered = append(ser.Accepted, 0), append(ser.Delivered, 0)
			ser.Retried, ser.Dead = append(ser.Retried, 0), append(ser.Dead, 0)
			ser.P50, ser.P99, ser.Backlog = append(ser.P50, nil), append(ser.P99, nil), append(ser.Backlog, nil)
			continue
		}
		rate := func(n int64) float64 { return math.Round(float64(n)/span*100) / 100 }
		ser.Accepted = append(ser.Accepted, rate(b.accepted))
		ser.Delivered = append(ser.Delivered, rate(b.delivered))
		ser.Retried = append(ser.Retried, rate(b.retried))
		ser.Dead = append(ser.Dead, rate(b.dead))
		ser.P50 = append(ser.P50, finite(quantile(&b.latency, 0.5)))
		ser.P99 = append(ser.P99, finite(quantile(&b.latency, 0.99)))
		if b.backlog >= 0 {
			ser.Backlog = append(ser.Backlog, ptr(b.backlog))
		} else {
			ser.Backlog = append(ser.Backlog, nil)
		}
		if i <= 1 { // the current bucket and the one before
			for j := range recent {
				recent[j] += b.latency[j]
			}
			recentN[0] += b.accepted
			recentN[1] += b.delivered
			recentN[2] += b.retried
			recentN[3] += b.dead
		}
	}
	prev := &r.buckets[((cur.start-step)/step)%StatsBuckets]
	span := float64(now.Unix()-cur.start) + float64(now.Nanosecond())/1e9
	if prev.start == cur.start-step {
		span += float64(step)
	}
	span = math.Max(1, span)
	rate := func(n int64) float64 { return math.Round(float64(n)/span*100) / 100 }
	v.Rates = statsRates{Accepted: rate(recentN[0]), Delivered: rate(recentN[1]), Retried: rate(recentN[2]),
		Dead: rate(recentN[3]), P50: finite(quantile(&recent, 0.5)), P99: finite(quantile(&recent, 0.99))}
	return v
}
