"""Atlantic pool."""
