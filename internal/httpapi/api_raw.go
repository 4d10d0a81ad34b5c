package httpapi

import (
	"context"
	"fanout/internal/service"
	"net/http"
)

// rawRequest is what a request of a raw event names besides its body.
type rawRequest struct {
	contentType, eventType string
}

// rawRequested reads whether a POST /v1/event asks for a raw event: the
// parameter raw (bare, true or 1; false or 0 is a JSON event as without
// it), the event's type from the parameter type, the body's content type
// from Content-Type. nil is a JSON event: the parameter type is then not
// read (a JSON event's type is its "type" field). Never a guess from the
// body or its Content-Type: what is JSON without raw=true stays JSON.
func rawRequested(r *http.Request) (*rawRequest, error) {
	q := r.URL.Query()
	if !q.Has("raw") {
		return nil, nil
	}
	switch v := q.Get("raw"); v {
	case "", "true", "1":
	case "false", "0":
		return nil, nil
	default:
		return nil, badRequest("raw must be true or false, got %q", v)
	}
	if len(q["type"]) > 1 {
		return nil, badRequest("type is given %d times; a raw event has one type", len(q["type"]))
	}
	if len(r.Header.Values("Content-Type")) > 1 {
		return nil, badRequest("Content-Type is given more than once")
	}
	// Checked before the body is read, and again by the service.
	ct, err := service.CheckRawContentType(r.Header.Get("Content-Type"))
	if err != nil {
		return nil, err
	}
	if err := service.CheckRawType(q.Get("type")); err != nil {
		return nil, err
	}
	return &rawRequest{contentType: ct, eventType: q.Get("type")}, nil
}

// saveRaw is the saver of a raw event: the body as it is.
func saveRaw(svc *service.Service, raw *rawRequest) saver {
	return func(ctx context.Context, scope service.Scope, tenant string, body []byte, key string) ([]string, error) {
		id, err := svc.IngestRaw(ctx, scope, tenant, &service.RawEvent{Type: raw.eventType, ContentType: raw.contentType, Body: body}, key)
		if err != nil {
			return nil, err
		}
		return []string{id}, nil
	}
}
