package httpapi

import (
	"log/slog"
	"net/http"

	"fanout/internal/service"
)

// handleTransformTest runs a transformation on an example event and
// answers the request it would make (the console's live preview).
func handleTransformTest(log *slog.Logger, svc *service.Service) http.Handler {
	return respondTo(log, http.StatusOK, func(r *http.Request, in *service.TransformTest) (*service.TransformPreview, error) {
		scope, err := scopeOf(r, svc)
		if err != nil {
			return nil, err
		}
		return svc.TestTransform(r.Context(), scope, in)
	})
}
