package service

import (
	"context"
	"errors"

	"fanout/destination"
	"fanout/webhook"
)

// DestinationInput is a change to a destination, as POST and PATCH
// /v1/destinations send it: a field that is absent is left as it is (or
// defaulted, on creation).
type DestinationInput struct {
	URL            *string                    `json:"url"`
	Description    *string                    `json:"description"`
	Enabled        *bool                      `json:"enabled"`
	Filter         *[]string                  `json:"filter"`
	Secret         *string                    `json:"secret"`
	MaxConcurrency *int                       `json:"max_concurrency"`
	RateLimit      *float64                   `json:"rate_limit"`
	Headers        *map[string]string         `json:"headers"`
	Retry          *destination.RetrySettings `json:"retry"`
	Paused         *bool                      `json:"paused"`
}

// check refuses what apply would read wrong: a zero max_concurrency is
// not "the default" (leave it out for that), and the destination's own
// validation would take it for absent.
func (in *DestinationInput) check() error {
	if in.MaxConcurrency != nil && *in.MaxConcurrency < 1 {
		return Invalid("max_concurrency must be between 1 and %d; leave it out for the default (%d)",
			destination.MaxConcurrency, destination.DefaultConcurrency)
	}
	return nil
}

func (in *DestinationInput) apply(d *destination.Destination) {
	set(&d.URL, in.URL)
	set(&d.Description, in.Description)
	if in.Enabled != nil && *in.Enabled != d.Enabled {
		// Enabled again: why it was disabled no longer holds. Disabled
		// by a person: the reason fanout had (a breaker's) is not theirs.
		d.Reason = ""
	}
	set(&d.Enabled, in.Enabled)
	set(&d.Filter, in.Filter)
	if in.Secret != nil {
		// A form that showed the masked secret posts back its mask:
		// that keeps the secret.
		d.Secret = destination.UnmaskSecret(*in.Secret, d.Secret)
	}
	set(&d.MaxConcurrency, in.MaxConcurrency)
	set(&d.RateLimit, in.RateLimit)
	if in.Headers != nil {
		d.Headers = destination.UnmaskHeaders(*in.Headers, d.Headers)
	}
	if in.Retry != nil {
		d.Retry = in.Retry
		if *in.Retry == (destination.RetrySettings{}) {
			d.Retry = nil // {} goes back to the default policy
		}
	}
	set(&d.Paused, in.Paused)
	if in.Paused != nil && !d.Paused {
		d.CircuitOpenUntil, d.Reason = nil, ""
	}
}

// set sets *dst to *v when v is given.
func set[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

// destinationError says a registry error in the service's words.
func destinationError(id string, err error) error {
	var de *destination.Error
	switch {
	case errors.As(err, &de):
		return Invalid("%s", de.Error())
	case errors.Is(err, destination.ErrNotFound):
		return NotFound("no destination with id %q", id)
	case errors.Is(err, destination.ErrExists):
		return Conflict("a destination with this id exists")
	}
	return err
}

// Secrets are write-only: a destination's signing secrets and header
// values are answered in full by CreateDestination and RotateSecret (the
// calls that set them) and by DestinationSecrets (their own route); every
// other answer holds the destination Masked.

// Destinations returns every destination, ordered by id, masked.
func (s *Service) Destinations() []*destination.Destination {
	list := s.Dests.List()
	out := make([]*destination.Destination, len(list))
	for i, d := range list {
		out[i] = d.Masked()
	}
	return out
}

// Destination returns one destination, masked.
func (s *Service) Destination(id string) (*destination.Destination, error) {
	d, ok := s.Dests.Get(id)
	if !ok {
		return nil, destinationError(id, destination.ErrNotFound)
	}
	return d.Masked(), nil
}

// DestinationSecrets returns a destination's secrets and header values in
// full.
func (s *Service) DestinationSecrets(id string) (*destination.Secrets, error) {
	d, ok := s.Dests.Get(id)
	if !ok {
		return nil, destinationError(id, destination.ErrNotFound)
	}
	return d.Secrets(), nil
}

// CreateDestination creates a destination, enabled unless in says
// otherwise; the answer shows its secret and headers in full.
func (s *Service) CreateDestination(ctx context.Context, in *DestinationInput) (*destination.Destination, error) {
	if in.URL == nil {
		return nil, Invalid("url is required")
	}
	if err := in.check(); err != nil {
		return nil, err
	}
	d := &destination.Destination{Enabled: true}
	in.apply(d)
	if err := s.Dests.Create(ctx, d); err != nil {
		return nil, destinationError(d.ID, err)
	}
	return d, nil
}

// UpdateDestination applies a change to a destination and returns it
// masked. A secret or header value sent as the mask of the stored one
// keeps the stored one.
func (s *Service) UpdateDestination(ctx context.Context, id string, in *DestinationInput) (*destination.Destination, error) {
	if err := in.check(); err != nil {
		return nil, err
	}
	d, err := s.Dests.Update(ctx, id, func(d *destination.Destination) error {
		in.apply(d)
		return nil
	})
	if err != nil {
		return nil, destinationError(id, err)
	}
	return d.Masked(), nil
}

// DeleteDestination deletes a destination; its pending deliveries fail for
// good when they next run.
func (s *Service) DeleteDestination(ctx context.Context, id string) error {
	return destinationError(id, s.Dests.Delete(ctx, id))
}

// ResumeDestination lifts a pause, by a person or by the breaker: the same
// as PATCH {"paused": false}, masked as its answer is.
func (s *Service) ResumeDestination(ctx context.Context, id string) (*destination.Destination, error) {
	unpause := false
	return s.UpdateDestination(ctx, id, &DestinationInput{Paused: &unpause})
}

// RotateSecret gives a destination a new secret; the old one keeps signing
// for the grace period. The answer shows the new secret and the previous
// one in full, the one answer after creation that does; the header values,
// which a rotation does not set, stay masked.
func (s *Service) RotateSecret(ctx context.Context, id string) (*destination.Destination, error) {
	d, err := s.Dests.Update(ctx, id, func(d *destination.Destination) error {
		d.Secret = webhook.GenerateSecret()
		return nil
	})
	if err != nil {
		return nil, destinationError(id, err)
	}
	m := d.Masked()
	m.Secret, m.PreviousSecret = d.Secret, d.PreviousSecret
	return m, nil
}
