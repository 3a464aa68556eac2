"""The gRPC layer (no model semantics): servers (:mod:`.server`), TLS and tokens (:mod:`.security`),
the health probe (:mod:`.healthcheck`), targets (:mod:`.target`)."""
