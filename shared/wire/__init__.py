"""The wire layer (imports only ``shared.pb``): over-the-air tensors (:mod:`.air`), header names
(:mod:`.headers`), size limits (:mod:`.limits`)."""
