"""xiaozhi-trio: the core of a streaming voice server for Xiaozhi devices."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("xiaozhi-trio")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
