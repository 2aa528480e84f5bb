"""Atlantic health: pure rules for judging the upstream and the machine (leaks, proxy signals)."""
