"""Atlantic forwarder."""
