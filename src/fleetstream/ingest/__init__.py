"""Decoding and validation of every input format into canonical records."""
