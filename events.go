package main

// The seed's two durable functions live in internal/service (functions.go),
// where every package's tests run them:
//
//   - handleEvent(event) finds the destinations that want the event and
//     Gathers one publishEvent per destination: the children are stored
//     with the event in one write, and the event is done when they are.
//   - publishEvent(message) sends the event to one destination, signed, and
//     is retried on its own until the destination has it or its budget is
//     spent.
//
// The root package could keep their bodies only if no test below it needed
// them; every test of the service and the API does, so the root names them
// here and app.Main registers them with the runtime.
