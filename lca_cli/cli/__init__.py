"""The ``lca`` command line: click commands that parse, call the Python API and render."""

from lca_cli.cli.app import main

__all__ = ["main"]
