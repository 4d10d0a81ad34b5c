# fanout's image: the static binary and a CA bundle, nothing else.
#
#   docker build -t fanout .
#   docker run -p 8000:8000 -v fanout-data:/data fanout
#
# The first stage builds the binary (pure Go, no cgo: it runs from an empty
# image); the second is the image, as `make image` builds it from a binary
# built on the host (deploy/image/Containerfile), where no base image can be
# pulled.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X fanout/internal/app.version=${VERSION}" -o /out/fanout . \
 && mkdir -p /out/data

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/fanout /fanout
# /data belongs to the user fanout runs as, so that a new volume is writable.
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
ENV FANOUT_ADDR=:8000 FANOUT_DATA=/data
EXPOSE 8000
VOLUME /data
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["/fanout", "healthcheck"]
ENTRYPOINT ["/fanout"]
