package service

import (
	"time"

	"fanout/destination"
	"fanout/dispatch"
)

// throttleWindow is how recently this process must have found a
// destination's throttle spent for its backlog to count as waiting on the
// throttle: the scheduler looks at a key with a backlog at least every poll
// interval (a second by default), and each look that finds no token
// records it (dispatch.KeyStatus.Throttled).
const throttleWindow = 5 * time.Second

// throttleWaiting returns how many of a destination's deliveries wait on its
// throttle: its backlog (the store's, over all replicas) while the throttle
// is what holds it back here, else 0. Retries waiting for their time are
// part of a backlog; next to thousands held back by a throttle, they are
// few.
func throttleWaiting(d *destination.Destination, ks dispatch.KeyStatus, backlog int64, now time.Time) int64 {
	if d.RateLimit.IsZero() || ks.Throttled.IsZero() || now.Sub(ks.Throttled) > throttleWindow {
		return 0
	}
	return backlog
}
