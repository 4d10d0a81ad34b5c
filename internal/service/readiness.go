package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"fanout/dispatch"
)

// readiness says whether this process should get traffic (/readyz): its
// store answers, its migrations are applied, and it is not shutting down.
// /healthz, by contrast, says only that the process lives: a load balancer
// takes a replica that is not ready out of rotation, and a supervisor
// restarts one that is not alive, which cannot fix a database.
//
// The store is asked at most once per maxAge, by one probe at a time
// bounded by timeout, however many probes and scrapes ask meanwhile.
type readiness struct {
	probe   func(ctx context.Context) error
	Timeout time.Duration
	MaxAge  time.Duration
	// log, when set, hears when readiness changes, with the store's error
	// (which /readyz, open to anyone, does not show).
	log *slog.Logger
	// draining is set at SIGTERM: not ready from then on.
	draining atomic.Bool

	mu      sync.Mutex
	result  ReadyView
	at      time.Time     // when result was found; zero before the first probe
	running chan struct{} // closed when the probe under way ends; nil if none
}

// ReadyView is the answer of /readyz.
type ReadyView struct {
	// Status is "ready" or "not ready"; Reason says why not.
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
	// Checks has one entry per condition: "ok", or what is wrong.
	Checks map[string]string `json:"checks"`
	Ready  bool              `json:"-"`
}

func newReadiness(probe func(ctx context.Context) error, log *slog.Logger) *readiness {
	return &readiness{probe: probe, Timeout: 2 * time.Second, MaxAge: time.Second, log: log}
}

// Drain makes the process not ready for good: it is shutting down.
func (r *readiness) Drain() { r.draining.Store(true) }

// Check returns whether the process is ready, asking the store unless a
// probe younger than maxAge answered; it waits at most until ctx ends.
func (r *readiness) Check(ctx context.Context) ReadyView {
	if r.draining.Load() {
		return r.view(nil)
	}
	r.mu.Lock()
	if time.Since(r.at) < r.MaxAge {
		defer r.mu.Unlock()
		return r.result
	}
	running := r.start()
	r.mu.Unlock()
	select {
	case <-running:
	case <-ctx.Done():
		return r.view(ctx.Err())
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.result
}

// Last returns the last answer without waiting, and starts a probe if it
// is stale: for the gauge fanout_ready, which a scrape must not hold up.
func (r *readiness) Last() ReadyView {
	if r.draining.Load() {
		return r.view(nil)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.at) >= r.MaxAge {
		r.start()
	}
	if r.at.IsZero() {
		return r.view(errors.New("not checked yet"))
	}
	return r.result
}

// start starts a probe unless one runs; r.mu is held.
func (r *readiness) start() chan struct{} {
	if r.running != nil {
		return r.running
	}
	running := make(chan struct{})
	r.running = running
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), r.Timeout)
		err := r.probe(ctx)
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("no answer within %v: %w", r.Timeout, err)
		}
		cancel()
		v := r.view(err)
		r.mu.Lock()
		was := r.result
		r.result, r.at, r.running = v, time.Now(), nil
		r.mu.Unlock()
		if r.log != nil && !r.draining.Load() {
			switch {
			case !v.Ready && (was.Ready || was.Status == ""):
				r.log.Warn("not ready: the store does not answer", "err", err)
			case v.Ready && was.Status != "" && !was.Ready:
				r.log.Info("ready again: the store answers")
			}
		}
		close(running)
	}()
	return running
}

// view is the answer for a probe that returned storeErr.
func (r *readiness) view(storeErr error) ReadyView {
	v := ReadyView{Status: "ready", Ready: true,
		Checks: map[string]string{"store": "ok", "migrations": "ok", "shutdown": "no"}}
	switch {
	case r.draining.Load():
		v.Checks["shutdown"] = "draining"
		v.Checks["store"] = "not checked"
		v.Reason = "shutting down: finishing the requests and deliveries in flight"
	case storeErr != nil:
		// Not the error itself: it may name hosts and users, and
		// /readyz answers anyone. fanout logs it.
		v.Checks["store"] = "unavailable"
		v.Reason = "the store does not answer (fanout's log says why)"
		if errors.Is(storeErr, context.DeadlineExceeded) {
			v.Checks["store"] = "timeout"
			v.Reason = fmt.Sprintf("the store does not answer within %v", r.Timeout)
		}
	}
	if v.Reason != "" {
		v.Status, v.Ready = "not ready", false
	}
	return v
}

// storeAnswers asks the store for a call that does not exist: a cheap read
// that needs the database to answer. Its migrations were applied before
// fanout started listening (Open migrates, or fails), so a store that
// answers is a store that is ready.
func (s *Service) storeAnswers(ctx context.Context) error {
	_, err := s.store.CallGet(ctx, "fanout-readiness-probe")
	if errors.Is(err, dispatch.ErrNotFound) {
		return nil
	}
	if err == nil {
		return nil
	}
	return err
}

// Ready says whether this process is ready for traffic, asking the store
// unless it answered a moment ago (see readiness).
func (s *Service) Ready(ctx context.Context) ReadyView {
	ctx, cancel := context.WithTimeout(ctx, s.Readiness.Timeout+time.Second)
	defer cancel()
	return s.Readiness.Check(ctx)
}

// Drain makes the process not ready for good: it is shutting down.
func (s *Service) Drain() { s.Readiness.Drain() }
