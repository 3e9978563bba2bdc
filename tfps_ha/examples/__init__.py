"""Example trainers: `digits` (Keras fit) and `ctr` (custom loop, sharded embeddings)."""
