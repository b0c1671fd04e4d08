"""Drives the domain processors over the bus."""
