"""DNS interception and fake IPs: names resolve at the exit node, never locally."""
