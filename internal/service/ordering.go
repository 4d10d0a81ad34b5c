package service

import (
	"context"
	"encoding/base64"
	"encoding/json"

	"fanout/dispatch"
)

// Ordered delivery: a destination with an ordering (destination.Ordering)
// receives the events of one key one at a time, in order; its deliveries
// carry the key (Message.OrderKey), and the runtime runs them as a sequence
// (dispatch.Call.OrderKey). A delivery that keeps failing holds its key back
// until it succeeds, is dead-lettered, or is skipped here.

// BlockedKeyView is one key of an ordered destination whose first delivery
// has failed and is being retried: the deliveries behind it wait.
type BlockedKeyView struct {
	// Key is the key's value as the events carry it (a JSON string,
	// number or boolean), null for the events without one.
	Key    json.RawMessage `json:"key"`
	Head   DeliveryView    `json:"head"`
	Queued int             `json:"queued"`
}

// OrderedKeys lists the keys of an ordered destination that have
// deliveries not final, in key order, from after cursor; blocked keeps only
// those whose first delivery has failed (blocked keys). The next cursor is
// "" at the end.
func (s *Service) OrderedKeys(ctx context.Context, scope Scope, destinationID string, blocked bool, cursor string,
	limit int) ([]BlockedKeyView, string, error) {
	d, err := s.destination(scope, destinationID)
	if err != nil {
		return nil, "", err
	}
	if d.Ordering == nil {
		return nil, "", Conflict("destination %s has no ordering: set one with PATCH {\"ordering\": {\"key\": ...}}", d.ID)
	}
	after, err := base64.RawURLEncoding.DecodeString(cursor)
	if err != nil {
		return nil, "", Invalid("cursor is not one this listing gave")
	}
	heads, err := s.store.CallOrderHeads(ctx, &dispatch.CallOrderHeadsParams{Key: d.ID, Blocked: blocked,
		After: string(after), Limit: limit + 1})
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(heads) > limit {
		heads = heads[:limit]
		next = base64.RawURLEncoding.EncodeToString([]byte(heads[limit-1].OrderKey))
	}
	out := make([]BlockedKeyView, len(heads))
	for i, h := range heads {
		out[i] = BlockedKeyView{Key: orderKeyJSON(h.OrderKey), Head: s.deliveryView(h.Head), Queued: h.Queued}
	}
	return out, next, nil
}

// orderKeyJSON is an order key as the API shows it: the JSON value it is
// (destination.Ordering.OrderKey); anything else, as a string.
func orderKeyJSON(k string) json.RawMessage {
	if k == "" {
		return nil
	}
	if json.Valid([]byte(k)) {
		return json.RawMessage(k)
	}
	b, _ := json.Marshal(k)
	return b
}

// SkipDelivery dead-letters a delivery of an ordered destination that is
// waiting (its retry, or its turn behind its key's first): it fails for
// good, as if its retries were spent, and its key moves on. It can be
// re-driven later, out of order.
func (s *Service) SkipDelivery(ctx context.Context, scope Scope, id string) (*DeliveryView, error) {
	c, err := s.delivery(ctx, scope, id)
	if err != nil {
		return nil, err
	}
	if c.OrderKey == "" {
		return nil, Conflict("delivery %s is not in an ordered key's sequence; only those can be skipped", c.ID)
	}
	if c.State != dispatch.StatePending {
		return nil, Conflict("delivery %s is %s; only a waiting delivery can be skipped (one being sent now can be once its attempt ends)",
			c.ID, deliveryState(c.State))
	}
	ok, err := s.rt.Fail(ctx, c.ID, "skipped by the operator")
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, Conflict("delivery %s started an attempt meanwhile; try again once it ends", c.ID)
	}
	return s.Delivery(ctx, scope, c.ID)
}
