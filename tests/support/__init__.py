"""Helpers of the tests and the benchmarks (never imported by the product): real processes
(:mod:`.procs`), the protobuf code generator (:mod:`.codegen`)."""
