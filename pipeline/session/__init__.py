"""One device session: the nursery that wires the stages, turns and barge-in."""
