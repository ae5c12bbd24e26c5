"""carray: JPEG compression-artifact reduction at scale, on Ray."""

__version__ = "0.1.0"
