package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"fanout/destination"
	"fanout/destination/transform"
	"fanout/dispatch"
	"fanout/webhook"
)

// Transformations: a destination's JavaScript handler(webhook), run by
// package transform on each delivery before it is signed, so that the
// signature covers what is sent. Setting one is an operator's right
// (RightTransform), which an operator may grant a tenant's token.

// transform runs d's transformation on req and changes req to what it
// answered. It returns the delivery's output when the handler cancelled it
// (nothing is sent), and an error, retried like a destination's 5xx, when
// the program failed: fixed meanwhile, the next attempt runs the new one.
//
// A raw event (req.ContentType set) is handed to the handler without a
// payload, and its bytes are sent as they came, whatever the handler made of
// the payload: it may change the request around them only.
func (fns *functions) transform(ctx context.Context, d *destination.Destination, req *webhook.Request, eventType string) (*Delivery, error) {
	if fns.transforms == nil {
		return nil, fmt.Errorf("%w: destination %s has a transformation, and this process runs none", dispatch.ErrTemporary, d.ID)
	}
	p, err := fns.transforms.Program(d.ID, d.Transform)
	if err != nil {
		return nil, fmt.Errorf("%w: transformation: %v", dispatch.ErrTemporary, err)
	}
	ev := transform.Event{ID: req.ID, Type: eventType, Tenant: d.Owner()}
	in := transform.Request{URL: req.URL, Headers: maskedHeaders(d.Headers), Body: req.Body}
	raw := req.ContentType != ""
	if raw {
		in.Body = nil // a null payload: its fields are not the handler's to read
	}
	out, err := fns.transforms.Run(ctx, p, ev, in)
	if errors.Is(err, transform.ErrBusy) {
		// Not the destination's failure: it waits its turn without
		// spending an attempt (nor counting toward its breaker).
		return nil, dispatch.Snooze(time.Second)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", dispatch.ErrTemporary, err)
	}
	if out.Cancelled {
		reason := "cancelled by the destination's transformation"
		if out.Reason != "" {
			reason += ": " + out.Reason
		}
		return &Delivery{Cancelled: reason}, nil
	}
	req.Method, req.URL = out.Request.Method, out.Request.URL
	if !raw {
		req.Body = out.Request.Body
	}
	req.Header = make(http.Header, len(out.Request.Headers))
	for k, v := range out.Request.Headers {
		req.Header.Set(k, unmaskHeader(d.Headers, k, v))
	}
	return nil, nil
}

// UseTransforms lets deliveries, checks and previews run transformations
// with e (in worker processes: see package transform); without it, a
// delivery of a destination with one fails, and so does setting one.
func (fns *functions) UseTransforms(e *transform.Engine) { fns.transforms = e }

// checkTransform runs src's top level in a worker, to refuse with a 400 a
// program that would fail every delivery (no handler, a throw, a loop).
// It runs only for a caller with RightTransform: what anyone else sends
// is refused before any of it runs.
func (s *Service) checkTransform(ctx context.Context, src string) error {
	if s.fns.transforms == nil {
		return Invalid("transform: this process runs no transformations")
	}
	err := s.fns.transforms.Compile(ctx, src)
	if errors.Is(err, transform.ErrBusy) {
		return errTransformsBusy
	}
	if err != nil {
		return Invalid("transform: %v", err)
	}
	return nil
}

// errTransformsBusy: every transformation worker is taken (by deliveries,
// or previews have their half): a check or a preview is asked again later.
var errTransformsBusy = &ErrTooMany{RetryAfter: time.Second,
	Message: "every transformation worker is busy running programs; send it again in a second"}

// maskedHeaders are a destination's header values as a handler reads
// them: masked, as every view shows them. Header values are write-only
// (view_secret), and a handler could otherwise hand them to whoever may
// read the delivery: in the error it throws or its cancellation's reason.
func maskedHeaders(h map[string]string) map[string]string {
	if h == nil {
		return nil
	}
	out := make(map[string]string, len(h))
	for k, v := range h {
		out[k] = destination.MaskHeader(v)
	}
	return out
}

// unmaskHeader is the value sent for header name that a handler answered
// as v: the stored value of that header when v is its mask (the handler
// kept it), else v.
func unmaskHeader(stored map[string]string, name, v string) string {
	for k, sv := range stored {
		if strings.EqualFold(k, name) && sv != "" && v == destination.MaskHeader(sv) {
			return sv
		}
	}
	return v
}

// TransformTest is the body of POST /v1/transform: a program and an
// example event, and the destination it would run for (its URL and
// headers, masked as the caller sees them) or a URL and headers.
type TransformTest struct {
	Transform   string            `json:"transform"`
	Event       json.RawMessage   `json:"event"`
	Destination string            `json:"destination"`
	URL         string            `json:"url"`
	Headers     map[string]string `json:"headers"`
}

// TransformPreview is what a program made of the example: the request
// fanout would sign and send, its cancellation, or why it failed.
type TransformPreview struct {
	OK        bool              `json:"ok"`
	Error     string            `json:"error,omitempty"`
	Line      int               `json:"line,omitempty"`
	Column    int               `json:"column,omitempty"`
	Timeout   bool              `json:"timeout,omitempty"`
	Cancelled bool              `json:"cancelled,omitempty"`
	Reason    string            `json:"reason,omitempty"`
	Method    string            `json:"method,omitempty"`
	URL       string            `json:"url,omitempty"`
	Headers   map[string]string `json:"headers,omitempty"`
	// Body is the body as JSON (what a handler's payload always is);
	// null when the handler removed it.
	Body       json.RawMessage `json:"body,omitempty"`
	DurationMS float64         `json:"duration_ms"`
}

// exampleURL is the URL of a test without a destination.
const exampleURL = "https://receiver.example/webhook"

// TestTransform runs a program on an example event, as a delivery of it
// would, without sending anything: the console's live preview. A program
// that fails is an answer (OK false, the error and its line), not an
// error; a test that is not one (no program, an event that is not a JSON
// object, a destination out of scope) is.
func (s *Service) TestTransform(ctx context.Context, scope Scope, in *TransformTest) (*TransformPreview, error) {
	if in.Transform == "" {
		return nil, Invalid("transform is required: the program to run")
	}
	if len(in.Event) == 0 || !json.Valid(in.Event) || firstByte(in.Event) != '{' {
		return nil, Invalid("event is required: an example event, a JSON object")
	}
	req := transform.Request{URL: in.URL, Headers: in.Headers, Body: in.Event}
	tenant := scope.Tenant()
	if in.Destination != "" {
		d, err := s.Destination(scope, in.Destination) // masked: the preview shows no secret
		if err != nil {
			return nil, err
		}
		req.URL, req.Headers, tenant = d.URL, d.Headers, d.Owner()
	}
	if req.URL == "" {
		req.URL = exampleURL
	}
	if err := destination.ValidateURL(req.URL, nil); err != nil {
		return nil, Invalid("%v", err)
	}
	if tenant == "" && scope.All() {
		tenant = DefaultTenant
	}
	start := time.Now()
	preview := func(err error) *TransformPreview {
		p := &TransformPreview{Error: err.Error(), DurationMS: float64(time.Since(start).Microseconds()) / 1000}
		var se *transform.SyntaxError
		var re *transform.RunError
		if errors.As(err, &se) {
			p.Line, p.Column = se.Line, se.Column
		}
		if errors.As(err, &re) {
			p.Timeout = re.Timeout
		}
		return p
	}
	if s.fns.transforms == nil {
		return nil, Invalid("this process runs no transformations")
	}
	ev := transform.Event{ID: "evt_preview", Type: EventFields(in.Event).Type, Tenant: tenant}
	out, err := s.fns.transforms.Preview(ctx, in.Transform, ev, req)
	if errors.Is(err, transform.ErrBusy) {
		return nil, errTransformsBusy
	}
	if err != nil {
		return preview(err), nil
	}
	res := &TransformPreview{OK: true, DurationMS: float64(time.Since(start).Microseconds()) / 1000}
	if out.Cancelled {
		res.Cancelled, res.Reason = true, out.Reason
		return res, nil
	}
	res.Method, res.URL, res.Headers, res.Body = out.Request.Method, out.Request.URL, out.Request.Headers, out.Request.Body
	return res, nil
}

func firstByte(b []byte) byte {
	for _, c := range b {
		if c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			return c
		}
	}
	return 0
}

// errNoTransformRight is a change of a transformation by a token without
// RightTransform.
var errNoTransformRight = errors.New("no transform right")

func noTransformRight() error {
	return Forbidden("setting or changing a transformation needs the right %q: an operator's, which an operator may grant a tenant's token (POST /v1/tokens)", RightTransform)
}
