package webhook

import (
	"bytes"
	"encoding/base64"
	"io"
	"strings"
	"testing"
	"unicode/utf8"
)

// Fuzz targets for what reaches this package from outside: a destination's
// answer (drain), signing secrets from the destinations API (ParseSecret),
// --allow-network (ParseNetworks) and a webhook-signature header (Verify).
// FuzzParseRetryAfter is in client_test.go.

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// FuzzDrain checks that drain reads no more than its limit of a
// destination's answer, and keeps an excerpt of it that is valid UTF-8, at
// most ExcerptBytes, and taken from the start of what it read.
func FuzzDrain(f *testing.F) {
	f.Add([]byte(`{"error":"schema"}`), uint32(65536))
	f.Add([]byte(strings.Repeat("é", 600)), uint32(1025))
	f.Add([]byte("\xff\xfe\xfd  trailing  "), uint32(3))
	f.Add([]byte("x"+strings.Repeat("€", 200)), uint32(512))
	f.Add([]byte{}, uint32(0))
	f.Fuzz(func(t *testing.T, body []byte, limit uint32) {
		r := &countingReader{r: bytes.NewReader(body)}
		got := drain(r, int64(limit))
		if r.n > int64(limit) {
			t.Fatalf("drain read %d bytes, over its limit of %d", r.n, limit)
		}
		if !utf8.ValidString(got) || len(got) > ExcerptBytes {
			t.Fatalf("excerpt %q: %d bytes, valid UTF-8 %v; want at most %d bytes of UTF-8",
				got, len(got), utf8.ValidString(got), ExcerptBytes)
		}
		read := body[:min(int64(len(body)), int64(limit), ExcerptBytes)]
		if !bytes.Contains(read, []byte(got)) {
			t.Fatalf("excerpt %q is not from the start of the answer %q", got, read)
		}
	})
}

// FuzzParseSecret checks that a secret ParseSecret accepts is a key of 24 to
// 64 bytes, that the key written back as a secret reads the same, and that
// what it signs verifies.
func FuzzParseSecret(f *testing.F) {
	for _, s := range []string{GenerateSecret(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
		"whsec_not base64!", "whsec_c2hvcnQ=", "whsec_", "whsec_MfKQ9r8GKYqrTwjU\nPD8ILPZIo2LaLaSw", "whsec_" + strings.Repeat("QUFB", 30)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, secret string) {
		key, err := ParseSecret(secret)
		if err != nil {
			if key != nil || err.Error() == "" {
				t.Fatalf("ParseSecret(%q) = %x, %v: a refusal returns no key and says why", secret, key, err)
			}
			return
		}
		if len(key) < 24 || len(key) > 64 {
			t.Fatalf("ParseSecret(%q) accepted a %d-byte key", secret, len(key))
		}
		again, err := ParseSecret(SecretPrefix + base64.StdEncoding.EncodeToString(key))
		if err != nil || !bytes.Equal(again, key) {
			t.Fatalf("the key of %q, written back, reads %x, %v", secret, again, err)
		}
		if !Verify(key, "evt", 1700000000, []byte(`{}`), Sign([][]byte{key}, "evt", 1700000000, []byte(`{}`))) {
			t.Fatalf("a signature by the key of %q does not verify", secret)
		}
	})
}

// FuzzParseNetworks checks that --allow-network values are read as masked
// prefixes that read back the same from their own text.
func FuzzParseNetworks(f *testing.F) {
	for _, s := range []string{"127.0.0.0/8", " 127.0.0.1 ", "::1", "192.168.1.7/16", "10.0.0.0/33", "fe80::1%eth0", "", "not-a-net", "::ffff:10.0.0.1/104"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		nets, err := ParseNetworks([]string{spec})
		if err != nil {
			return
		}
		for _, p := range nets {
			if !p.IsValid() || p != p.Masked() {
				t.Fatalf("ParseNetworks(%q) gave %v, not a valid masked prefix", spec, p)
			}
			back, err := ParseNetworks([]string{p.String()})
			if err != nil || len(back) != 1 || back[0] != p {
				t.Fatalf("ParseNetworks(%q) gave %v, whose text reads back as %v, %v", spec, p, back, err)
			}
		}
	})
}

// FuzzVerify checks that a signature verifies, and that Verify accepts a
// header only when one of its entries is the signature itself.
func FuzzVerify(f *testing.F) {
	f.Add("evt_1", int64(1700000000), []byte(`{"a":1}`), "v1,bm90IGEgc2lnbmF0dXJl v2,x")
	f.Add("", int64(-1), []byte{}, "")
	f.Add("id with spaces", int64(0), []byte("\x00\xff"), "   ")
	key := bytes.Repeat([]byte{7}, 32)
	f.Fuzz(func(t *testing.T, id string, ts int64, body []byte, header string) {
		sig := Sign([][]byte{key}, id, ts, body)
		if !Verify(key, id, ts, body, sig) || !Verify(key, id, ts, body, header+" "+sig) {
			t.Fatalf("the signature %q of (%q, %d, %q) does not verify", sig, id, ts, body)
		}
		want := false
		for _, f := range strings.Fields(header) {
			want = want || f == sig
		}
		if got := Verify(key, id, ts, body, header); got != want {
			t.Fatalf("Verify(header %q) = %v, want %v: the signature is %q", header, got, want, sig)
		}
	})
}
