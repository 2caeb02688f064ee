"""streamd: continual self-supervised representation learning from a live image stream."""
__version__ = "0.1.0"
