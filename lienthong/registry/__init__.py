"""Connector manifests: their checking, versions and approval; the source of the routes."""
