"""Deployment: local runner and operator artefacts."""
