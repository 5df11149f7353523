"""High availability: two controllers per site, one leader elected in etcd, fenced writes."""
