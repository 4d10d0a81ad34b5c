package service

import (
	"fanout/dispatch"
	"testing"
)

func TestService_States(t *testing.T) {
	t.Parallel()
	for _, st := range []dispatch.State{dispatch.StatePending, dispatch.StateRunning, dispatch.StateDone, dispatch.StateFailed} {
		name := deliveryState(st)
		back, err := parseDeliveryState(name)
		if err != nil || back != st {
			t.Errorf("parseDeliveryState(deliveryState(%v) = %q) = %v, %v", st, name, back, err)
		}
	}
	for st, want := range map[dispatch.State]string{dispatch.StatePending: "pending", dispatch.StateRunning: "pending",
		dispatch.StateWaiting: "delivering", dispatch.StateDone: "delivered", dispatch.StateFailed: "failed"} {
		if got := eventState(st); got != want {
			t.Errorf("eventState(%v) = %q, want %q", st, got, want)
		}
	}
}
