"""Where the project reaches into third-party internals: one module (or package) per library.

Each names the upstream version it was written against (`UPSTREAM`) and the upstream objects it
replaces, subclasses or calls by a private name (`PATCHED`, as "module:qualified.name");
tests/unit/test_extensions.py pins their source, so an upgrade that changes them fails there
first. Code outside this package uses only public APIs of Feast, BentoML and Great Expectations.
"""
