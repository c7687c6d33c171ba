"""TPU topologies, libtpu and ahead-of-time compilation for them (aot.py)."""
