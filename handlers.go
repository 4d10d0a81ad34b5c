package main

// The seed's routes, POST /v1/event and POST /v1/batch, live in
// internal/httpapi (handlers.go) with the rest of the API, where its tests
// reach them: each reads and checks the body within its limits and calls
// one service method, Service.Ingest, which stores the events durably
// before the 202.
