"""The fuzzing harness (placeholder docstring)."""
