"""The protocol layer (torch-free; imports ``wire``): stages (:mod:`.stages`), the protocol table
(:mod:`.registry`), what crosses (:mod:`.plan`), the one runner (:mod:`.runner`), tensor shapes
(:mod:`.geometry`), schedules and rounds (:mod:`.schedule`), cooperative windows (:mod:`.tiles`),
proto <-> domain (:mod:`.serde`)."""
