"""attnrewrite: find softmax attention in transformer graphs and substitute exact or approximate operators."""

__version__ = "0.1.0"
