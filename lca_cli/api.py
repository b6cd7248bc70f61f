"""The Python API (placeholder while the layout lands)."""
