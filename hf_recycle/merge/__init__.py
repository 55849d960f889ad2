"""Merging: lazy tensor sources, merge methods, and the streaming engine."""
