"""High availability: leader election, fencing and shared state in etcd."""
