"""Feast: the feature definitions, the store, materialization, offline retrieval, online lookups, parity, and
the two Feast extensions."""
