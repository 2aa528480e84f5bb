"""Atlantic client."""
