package service

import (
	"context"
	"testing"
	"time"
)

// TestTenants_Admit: a tenant's events in flight to the store stay within
// the bound, another tenant's are not held back by it, and a request larger
// than the bound takes the tenant's whole share.
func TestTenants_Admit(t *testing.T) {
	ts := newTenants(nil, 0, 0, 10, time.Now)
	a, b := &storedTenant{Tenant: Tenant{ID: "a"}, Key: "tenant:a"}, &storedTenant{Tenant: Tenant{ID: "b"}, Key: "tenant:b"}
	ctx := context.Background()
	relA, err := ts.admit(ctx, a, 8)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := ts.admit(short, a, 5); err == nil {
		t.Fatal("a took 13 events in flight with a bound of 10")
	}
	relB, err := ts.admit(ctx, b, 10)
	if err != nil {
		t.Fatalf("b was held back by a's events: %v", err)
	}
	relB()
	relA()
	big, err := ts.admit(ctx, a, 1000)
	if err != nil {
		t.Fatalf("a request over the bound, with nothing in flight: %v", err)
	}
	short2, cancel2 := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel2()
	if _, err := ts.admit(short2, a, 1); err == nil {
		t.Fatal("a request over the bound did not take the whole share")
	}
	big()
	if rel, err := ts.admit(ctx, a, 10); err != nil {
		t.Fatalf("the share was not given back: %v", err)
	} else {
		rel()
	}
	// No bound: nothing waits.
	free := newTenants(nil, 0, 0, 0, time.Now)
	for range 3 {
		if _, err := free.admit(short, a, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
}
