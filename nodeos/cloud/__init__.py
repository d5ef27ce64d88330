"""OpenStack control plane: configuration rendered from the replicated state, one-time jobs, service-specific checks."""
