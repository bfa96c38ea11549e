"""The collection pipeline, one module per stage: shard -> generate -> verify -> profile -> filter -> format, and the
run's outcome."""
