"""The trainer service's gRPC edge: what other services, tests and studies may use."""
