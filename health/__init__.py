"""Atlantic health."""
