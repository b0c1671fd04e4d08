"""The HTTP API: app factory, routes, live streams."""

from fleetstream.api.app import create_app

__all__ = ["create_app"]
