"""Reductions and views of a store: numbers only, streamed over chunks; never imports torch."""
