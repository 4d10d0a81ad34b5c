package webhook

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"fanout/dispatch"
)

// The known answer of the Standard Webhooks reference tests.
func TestSign_KnownAnswer(t *testing.T) {
	key, err := ParseSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	got := Sign([][]byte{key}, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, []byte(`{"test": 2432232314}`))
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Fatalf("Sign = %q, want %q", got, want)
	}
	if !Verify(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, []byte(`{"test": 2432232314}`), got) {
		t.Fatal("Verify refuses its own signature")
	}
	if Verify(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265331, []byte(`{"test": 2432232314}`), got) {
		t.Fatal("Verify accepts a signature of another timestamp")
	}
}

func TestSign_Rotation(t *testing.T) {
	oldKey, _ := ParseSecret(GenerateSecret())
	newKey, _ := ParseSecret(GenerateSecret())
	header := Sign([][]byte{newKey, oldKey}, "evt", 1700000000, []byte(`{}`))
	if n := len(strings.Fields(header)); n != 2 {
		t.Fatalf("signature header %q has %d entries, want 2", header, n)
	}
	for name, key := range map[string][]byte{"old": oldKey, "new": newKey} {
		if !Verify(key, "evt", 1700000000, []byte(`{}`), header) {
			t.Fatalf("a receiver with the %s secret refuses the delivery", name)
		}
	}
}

func TestParseSecret(t *testing.T) {
	tests := []struct {
		secret string
		ok     bool
	}{
		{GenerateSecret(), true},
		{"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", true},
		{"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", false},
		{"whsec_not base64!", false},
		{"whsec_c2hvcnQ=", false}, // 5 bytes
		{"whsec_" + strings.Repeat("QUFB", 30), false},
	}
	for _, tc := range tests {
		_, err := ParseSecret(tc.secret)
		if (err == nil) != tc.ok {
			t.Errorf("ParseSecret(%q) err=%v, want ok=%v", tc.secret, err, tc.ok)
		}
	}
}

func TestGuard_Check(t *testing.T) {
	g := NewGuard([]netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")})
	tests := []struct {
		addr    string
		blocked string
	}{
		{"93.184.216.34", ""},
		{"2606:2800:220:1:248:1893:25c8:1946", ""},
		{"127.0.0.1", "loopback"},
		{"::1", "loopback"},
		{"10.0.0.5", "private"},
		{"10.1.2.3", ""}, // allowed
		{"172.16.0.1", "private"},
		{"192.168.1.1", "private"},
		{"fd12::1", "private"},
		{"fd00:ec2::254", "private"},
		{"169.254.169.254", "link-local"},
		{"fe80::1", "link-local"},
		{"0.0.0.0", "unspecified"},
		{"::", "unspecified"},
		{"239.1.1.1", "multicast"},
		{"224.0.0.1", "link-local"},
		{"100.64.0.1", "shared (CGNAT)"},
		{"::ffff:127.0.0.1", "loopback"},
		{"::ffff:10.0.0.1", "private"},
		{"255.255.255.255", "reserved"},
	}
	for _, tc := range tests {
		err := g.Check(netip.MustParseAddr(tc.addr))
		var be *BlockedError
		switch {
		case tc.blocked == "" && err != nil:
			t.Errorf("Check(%s) = %v, want allowed", tc.addr, err)
		case tc.blocked != "" && (!errors.As(err, &be) || be.Reason != tc.blocked):
			t.Errorf("Check(%s) = %v, want blocked as %s", tc.addr, err, tc.blocked)
		}
	}
}

func TestGuard_Dial(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	tests := []struct {
		name  string
		allow []string
		url   string
		want  dispatch.Status
	}{
		{"LoopbackRefused", nil, srv.URL, dispatch.StatusPermanent},
		{"LoopbackByNameRefused", nil, strings.Replace(srv.URL, "127.0.0.1", "localhost", 1), dispatch.StatusPermanent},
		{"LoopbackAllowed", []string{"127.0.0.0/8", "::1"}, srv.URL, dispatch.StatusOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			nets, err := ParseNetworks(tc.allow)
			if err != nil {
				t.Fatal(err)
			}
			c := NewClient(Config{Timeout: 2 * time.Second, DialContext: NewGuard(nets).DialContext(2 * time.Second)})
			defer c.Close()
			_, err = c.Send(context.Background(), &Request{URL: tc.url, ID: "x", Body: []byte(`{}`)})
			if got := dispatch.ErrorStatus(err); got != tc.want {
				t.Fatalf("Send err=%v (%v), want %v", err, got, tc.want)
			}
			if tc.want != dispatch.StatusOK && !strings.Contains(err.Error(), "--allow-network") {
				t.Fatalf("refusal %q does not say how to allow it", err)
			}
		})
	}
}

func TestParseNetworks(t *testing.T) {
	got, err := ParseNetworks([]string{"10.0.0.0/8", " 127.0.0.1 ", "::1", "192.168.1.7/16"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.0/8", "127.0.0.1/32", "::1/128", "192.168.0.0/16"}
	if len(got) != len(want) {
		t.Fatalf("ParseNetworks = %v (%d prefixes), want %v", got, len(got), want)
	}
	for i, p := range got {
		if p.String() != want[i] {
			t.Fatalf("ParseNetworks = %v, want %v", got, want)
		}
	}
	if _, err := ParseNetworks([]string{"not-a-net"}); err == nil {
		t.Fatal("ParseNetworks accepted garbage")
	}
}

func TestSend_Signs(t *testing.T) {
	secret := GenerateSecret()
	key, _ := ParseSecret(secret)
	var got *http.Request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got = r }))
	defer srv.Close()
	c := NewClient(Config{})
	defer c.Close()
	body := []byte(`{"a":1}`)
	if _, err := c.Send(context.Background(), &Request{URL: srv.URL, ID: "evt_1", Body: body, Keys: [][]byte{key}}); err != nil {
		t.Fatal(err)
	}
	var ts int64
	for _, ch := range got.Header.Get("webhook-timestamp") {
		ts = ts*10 + int64(ch-'0')
	}
	if !Verify(key, "evt_1", ts, body, got.Header.Get("webhook-signature")) {
		t.Fatalf("signature %q does not verify", got.Header.Get("webhook-signature"))
	}
}
