"""edge: a self-hosted Access edge."""

__version__ = "0.1.0"
