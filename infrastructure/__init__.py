"""Deployment and local-run tooling: the local stack, the local Lambda Runtime API."""
