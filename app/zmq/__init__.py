"""The ZeroMQ ingress: the relay process, its supervisor, the per-worker ingress, sockets and frames."""
