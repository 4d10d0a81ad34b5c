package service

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestRawEvent: a raw event's input round-trips exactly, is JSON (the
// runtime's inputs are), is never taken for a JSON event, and keeps a text
// body as readable, searchable text.
func TestRawEvent(t *testing.T) {
	for _, tc := range []struct {
		name string
		ev   RawEvent
		enc  string // the encoding it must be stored in
		in   string // a piece the stored input must contain as is
	}{
		{"xml", RawEvent{"order.created", "application/xml", []byte(`<a x="1">&amp; é</a>`)}, rawText, `<a x=\"1\">&amp; é</a>`},
		{"controls", RawEvent{"", "text/plain; charset=utf-8", []byte("a\n\r\t\x00\x1f\x7f\"\\\u2028")}, rawText, `a\n\r\t\u0000\u001f`},
		{"bytes", RawEvent{"blob", "application/octet-stream", []byte{0xff, 0, 0xfe, 'a'}}, rawBase64, `"/wD+YQ=="`},
		{"json by chance", RawEvent{"t", "text/plain", []byte(`{"type":"x","id":"y"}`)}, rawText, `{\"type\"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := encodeRaw(&tc.ev)
			if !json.Valid(in) || !isRaw(in) || !strings.Contains(string(in), `"`+tc.enc+`"`) || !strings.Contains(string(in), tc.in) {
				t.Fatalf("encodeRaw = %s: want JSON, raw, %s, holding %s", in, tc.enc, tc.in)
			}
			got, err := decodeRaw(in)
			if err != nil || got.Type != tc.ev.Type || got.ContentType != tc.ev.ContentType || !bytes.Equal(got.Body, tc.ev.Body) {
				t.Fatalf("decodeRaw(%s) = %+v, %v; want %+v", in, got, err, tc.ev)
			}
			if f := EventFields(in); f.Type != tc.ev.Type || f.ID != "" {
				t.Errorf("EventFields = %+v, want type %q and no id (a raw body is not read)", f, tc.ev.Type)
			}
			if p := filterPayload(in); p == nil || len(p) != 0 {
				t.Errorf("filterPayload = %q, want empty, not nil (nil skips the filters)", p)
			}
			body, ct, err := deliveryBody(in)
			if err != nil || ct != tc.ev.ContentType || !bytes.Equal(body, tc.ev.Body) {
				t.Errorf("deliveryBody = %q %q %v", body, ct, err)
			}
		})
	}
	// A JSON event is not raw and goes out as it is, with no type of its own.
	event := []byte(`{"type":"a","data":[1]}`)
	if body, ct, err := deliveryBody(event); isRaw(event) || err != nil || ct != "" || !bytes.Equal(body, event) || !bytes.Equal(filterPayload(event), event) {
		t.Errorf("a JSON event: raw %v, deliveryBody %q %q %v", isRaw(event), body, ct, err)
	}
	for _, bad := range []string{`[]`, `["raw","t","c","text"]`, `["json","t","c","text","x"]`, `["raw","t","c","hex","00"]`,
		`["raw","t","c","base64","!!"]`, `["raw",1,"c","text","x"]`, `[`} {
		if _, err := decodeRaw([]byte(bad)); err == nil {
			t.Errorf("decodeRaw(%s) took it", bad)
		}
		if _, _, err := deliveryBody([]byte(bad)); err == nil {
			t.Errorf("deliveryBody(%s) sent it", bad)
		}
	}
}

// TestCheckRawContentType: a media type, not JSON, not the form type curl
// -d sends untold; kept as given.
func TestCheckRawContentType(t *testing.T) {
	for _, tc := range []struct {
		ct, want, err string
	}{
		{"application/xml", "application/xml", ""},
		{"  text/csv; charset=utf-8 ", "text/csv; charset=utf-8", ""},
		{`multipart/form-data; boundary="a,b"`, `multipart/form-data; boundary="a,b"`, ""},
		{"application/octet-stream", "application/octet-stream", ""},
		{"", "", "needs a Content-Type"},
		{"xml", "", "not a media type"},
		{"text/", "", "not a media type"},
		{"*/*", "", "not a media type"},
		{"text/plain; charset", "", "not a media type"},
		{"application/json", "", "is JSON"},
		{"Application/JSON; charset=utf-8", "", "is JSON"},
		{"application/vnd.api+json", "", "is JSON"},
		{"application/x-www-form-urlencoded", "", "curl -d"},
		{"text/plain\x00", "", "printable ASCII"},
		{"text/plain; x=\"é\"", "", "printable ASCII"},
		{"text/" + strings.Repeat("a", 300), "", "longer than"},
	} {
		got, err := CheckRawContentType(tc.ct)
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("CheckRawContentType(%q) = %q, %v; want %q", tc.ct, got, err, tc.want)
		case tc.err != "" && (err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("CheckRawContentType(%q) = %q, %v; want an invalid request naming %q", tc.ct, got, err, tc.err)
		}
	}
	for _, tc := range []struct {
		typ string
		ok  bool
	}{{"", true}, {"order.created", true}, {"commande.créée", true}, {"fanout.test", false}, {"a\nb", false},
		{"\xff", false}, {strings.Repeat("a", 256), false}} {
		if err := CheckRawType(tc.typ); (err == nil) != tc.ok {
			t.Errorf("CheckRawType(%q) = %v, want ok %v", tc.typ, err, tc.ok)
		}
	}
}

// FuzzDecodeRaw: whatever an input holds, decodeRaw does not panic, and
// what it reads is written back as an input that reads the same; whatever
// a raw event holds, its input round-trips exactly.
func FuzzDecodeRaw(f *testing.F) {
	f.Add([]byte(`["raw","t","application/xml","text","<a/>"]`), "t", "text/plain", []byte("a\x00\xff"))
	f.Add([]byte(`["raw","","c","base64","/wD+YQ=="]`), "", "c", []byte("é\u2028\""))
	f.Add([]byte(`["raw","t","c","text","\ud800"]`), "x\x00", "", []byte{})
	f.Add([]byte(`[`), "\xff\xfe", "text/\x80", []byte("\xc3"))
	f.Fuzz(func(t *testing.T, input []byte, typ, ct string, body []byte) {
		if ev, err := decodeRaw(input); err == nil {
			again, err := decodeRaw(encodeRaw(ev))
			if err != nil || again.Type != ev.Type || again.ContentType != ev.ContentType || !bytes.Equal(again.Body, ev.Body) {
				t.Fatalf("%s read as %+v, written and read again as %+v, %v", input, ev, again, err)
			}
		}
		ev := &RawEvent{Type: typ, ContentType: ct, Body: body}
		in := encodeRaw(ev)
		if !json.Valid(in) || !utf8.Valid(in) || !isRaw(in) {
			t.Fatalf("encodeRaw(%+v) = %q: not a raw JSON input in UTF-8", ev, in)
		}
		got, err := decodeRaw(in)
		if err != nil || !bytes.Equal(got.Body, body) {
			t.Fatalf("encodeRaw(%+v) = %s read back as %+v, %v", ev, in, got, err)
		}
		// Type and content type are strings of the request: valid UTF-8
		// ones (CheckRawType, CheckRawContentType) come back the same.
		if isValidUTF8(typ) && got.Type != typ || isValidUTF8(ct) && got.ContentType != ct {
			t.Fatalf("encodeRaw(%+v) read back as %+v", ev, got)
		}
	})
}

func isValidUTF8(s string) bool { return strings.ToValidUTF8(s, "\ufffd") == s }
