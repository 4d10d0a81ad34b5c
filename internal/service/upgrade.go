package service

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"time"

	"fanout/dispatch"
)

// One-time rewrites of what older fanouts stored, run in the background at
// start while fanout serves: the store's migrations change its schema, and
// know calls, not fanout's functions or their JSON; what fanout stores in
// its calls, fanout rewrites itself, through a generic store operation
// (dispatch.Store.CallRewriteInputs).
//
// Each is idempotent and paged (a page is one short transaction, so the
// writer and the runtime carry on between pages); once it has been through
// every call, a document in the store (kind upgradeKind) records that it is
// done, and later starts skip it. Stopped before the end (a shutdown, an
// error), it starts again from the first call at the next start.

// upgradeKind is the kind of the documents that record finished upgrades.
const upgradeKind = "upgrade"

// upgradePage is how many calls one page of an upgrade reads.
const upgradePage = 256

// upgradePause is how long an upgrade waits before it goes back to calls
// that other transactions held (dispatch.CallRewriteInputsResult.Held).
const upgradePause = 20 * time.Millisecond

// startUpgrades runs the upgrades the store has not had, in the background,
// until they are done or ctx ends.
func (s *Service) startUpgrades(ctx context.Context) {
	ctx, s.stopUpgrades = context.WithCancel(ctx)
	s.upgraded = make(chan struct{})
	go func() {
		defer close(s.upgraded)
		if err := s.payloadOnce(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("upgrade of stored deliveries stopped; it starts again at the next start", "upgrade", "payload-once", "err", err)
		}
	}()
}

// StopUpgrading stops the upgrades and waits for them.
func (s *Service) StopUpgrading() {
	if s.stopUpgrades != nil {
		s.stopUpgrades()
		<-s.upgraded
	}
}

// payloadOnce rewrites the deliveries that carry a copy of their event
// (fanout before issue 12: {"event_id":..., "destination_id":..., "event":
// <the event>}) to {}: a delivery reads its event from its parent
// (dispatch.ParentInput), its id is the parent's, its destination the
// call's key (see Message). Migration 004 of both stores did this in SQL,
// with fanout's function name and JSON in the driver; it only drops the
// index of children now.
func (s *Service) payloadOnce(ctx context.Context) error {
	const id = "payload-once"
	if _, err := s.store.DocGet(ctx, upgradeKind, id); err == nil {
		return nil
	} else if !errors.Is(err, dispatch.ErrNotFound) {
		return err
	}
	after, rewritten := "", 0
	for {
		res, err := s.store.CallRewriteInputs(ctx, &dispatch.CallRewriteInputsParams{
			Function: s.fns.PublishEvent.Name(), After: after, Limit: upgradePage, Rewrite: compactDelivery})
		if err != nil {
			return err
		}
		rewritten += res.Rewritten
		if res.Held {
			// Calls that group commits held: back to them in a moment.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(upgradePause):
			}
		} else if res.Next == "" {
			break
		}
		after = res.Next
	}
	err := s.store.DocCreate(ctx, &dispatch.Doc{Kind: upgradeKind, ID: id,
		Data: []byte(`{"rewritten":` + strconv.Itoa(rewritten) + `}`)})
	if err != nil && !errors.Is(err, dispatch.ErrDocExists) { // another replica finished first
		return err
	}
	if rewritten > 0 {
		s.log.Info("deliveries no longer carry a copy of their event", "upgrade", id, "rewritten", rewritten)
	}
	return nil
}

// compactDelivery is payloadOnce's rewrite of one delivery: {} when the
// delivery would send the same bytes under the same id to the same
// destination without its copy, otherwise nothing (publishEvent reads what
// a message carries).
func compactDelivery(c *dispatch.Call) ([]byte, bool) {
	var m Message
	if m.UnmarshalJSON(c.Input) != nil || m.Event == nil ||
		(m.EventID != "" && m.EventID != c.ParentID) || (m.DestinationID != "" && m.DestinationID != c.Key) ||
		!bytes.Equal(m.Event, bytes.Trim(c.ParentInput, " \t\r\n")) {
		return nil, false
	}
	return []byte("{}"), true
}
