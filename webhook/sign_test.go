package webhook

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// The known answer of the Standard Webhooks reference tests.
func TestSign_KnownAnswer(t *testing.T) {
	t.Parallel()
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
	t.Parallel()
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
	t.Parallel()
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

func TestSend_Signs(t *testing.T) {
	t.Parallel()
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
