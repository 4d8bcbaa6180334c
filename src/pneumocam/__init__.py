"""pneumocam: pneumonia detection on chest X-rays with a ResNet18 and Class Activation Maps."""

__version__ = "0.1.0"
