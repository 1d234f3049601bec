"""The mesh model: validated, immutable objects and snapshots. No I/O, no Envoy."""
