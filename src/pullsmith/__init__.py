"""pullsmith: a task in words becomes a tested pull request."""

__version__ = "0.1.0"
