"""The system edge: policy routing (netlink) and the nftables kill switch."""
