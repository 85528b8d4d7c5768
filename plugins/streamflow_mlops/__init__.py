"""StreamFlow churn platform: the one library shared by the DAGs, the bento and the tests."""

__version__ = "0.1.0"
