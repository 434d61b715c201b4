"""cleanface: clean label noise out of face-recognition training sets."""

__version__ = "0.1.0"
