package destination

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"
)

// Throttle is a destination's rate limit: at most Rate deliveries start per
// Per (a second, a minute or an hour), at most Burst of them at once. It is
// a token bucket: Burst tokens at most, refilled at Rate per Per, one spent
// by each delivery that starts. On PostgreSQL the bucket is in the store,
// so the limit holds for every replica together (see the README).
//
// In JSON it is {"rate": 100, "per": "minute", "burst": 10}; a plain
// number is a rate per second with the default burst, which is what
// rate_limit was before it had units, and what a throttle of that shape is
// written back as, so that clients of that time read it as they did.
type Throttle struct {
	Rate float64 `json:"rate"`
	// Per is "second" (the default), "minute" or "hour".
	Per string `json:"per,omitempty"`
	// Burst is how many deliveries may start at once after the bucket
	// filled; 0 takes one second's worth of Rate, at least 1.
	Burst int `json:"burst,omitempty"`
}

// MaxThrottleBurst bounds a throttle's burst.
const MaxThrottleBurst = 1_000_000

// periods are the units a throttle may count in.
var periods = map[string]time.Duration{"": time.Second, "second": time.Second, "minute": time.Minute, "hour": time.Hour}

// IsZero reports whether there is no throttle.
func (t Throttle) IsZero() bool { return t.Rate == 0 }

// PerSecond is the throttle's rate in deliveries per second.
func (t Throttle) PerSecond() float64 {
	p, ok := periods[t.Per]
	if !ok {
		return 0
	}
	return t.Rate / p.Seconds()
}

// BurstOrDefault is Burst, or one second's worth of the rate (at least 1)
// when Burst is 0.
func (t Throttle) BurstOrDefault() int {
	if t.Burst > 0 {
		return t.Burst
	}
	return max(1, int(math.Min(t.PerSecond(), MaxThrottleBurst)))
}

// validate refuses a throttle that names no known unit or is out of range,
// and writes "second" as the default it is, so that a throttle is stored
// one way.
func (t *Throttle) validate() error {
	if t.Per == "second" {
		t.Per = ""
	}
	if _, ok := periods[t.Per]; !ok {
		return invalid(`rate_limit.per %q must be "second", "minute" or "hour"`, t.Per)
	}
	if math.IsNaN(t.Rate) || t.Rate < 0 || t.Rate > 1e6 {
		return invalid("rate_limit.rate must be between 0 (none) and 1000000 deliveries per %s", t.unit())
	}
	if t.Rate > 0 && t.PerSecond() < 1.0/(24*3600) {
		return invalid("rate_limit.rate is below one delivery a day")
	}
	if t.Burst < 0 || t.Burst > MaxThrottleBurst {
		return invalid("rate_limit.burst must be between 0 (one second's worth of rate) and %d", MaxThrottleBurst)
	}
	if t.Rate == 0 && (t.Burst != 0 || (t.Per != "" && t.Per != "second")) {
		return invalid("rate_limit.rate is required (a positive number) when per or burst is given")
	}
	return nil
}

func (t Throttle) unit() string {
	if t.Per == "" {
		return "second"
	}
	return t.Per
}

// String says the throttle in words: "100/minute, burst 10".
func (t Throttle) String() string {
	if t.IsZero() {
		return "none"
	}
	return fmt.Sprintf("%g/%s, burst %d", t.Rate, t.unit(), t.BurstOrDefault())
}

// MarshalJSON writes a per-second throttle with the default burst as a plain
// number, as rate_limit was written before it had units, and any other as an
// object.
func (t Throttle) MarshalJSON() ([]byte, error) {
	if t.unit() == "second" && t.Burst == 0 {
		return json.Marshal(t.Rate)
	}
	type plain Throttle
	p := plain(t)
	p.Per = t.unit()
	return json.Marshal(p)
}

// UnmarshalJSON reads a number (deliveries per second) or an object; null
// is no throttle. Unknown fields of the object are refused, so that a
// misspelt "burts" is not silently a throttle without a burst.
func (t *Throttle) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		*t = Throttle{}
		return nil
	case len(b) > 0 && b[0] == '{':
		type plain Throttle
		var p plain
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			return &Error{msg: "rate_limit: " + strings.TrimPrefix(err.Error(), "json: ") +
				` (expected {"rate": 100, "per": "second|minute|hour", "burst": 10} or a number per second)`}
		}
		*t = Throttle(p)
		return nil
	}
	var rate float64
	if err := json.Unmarshal(b, &rate); err != nil {
		return &Error{msg: `rate_limit must be a number of deliveries per second or {"rate": 100, "per": "minute", "burst": 10}`}
	}
	*t = Throttle{Rate: rate}
	return nil
}
