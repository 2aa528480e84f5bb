"""Atlantic interceptor."""
