"""pneumocam: pneumonia detection on chest X-rays with a ResNet18 and Class Activation Maps."""

from importlib import metadata

try:
    __version__ = metadata.version("pneumocam")  # one source: pyproject.toml, through the installed metadata
except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
