"""attnrewrite: find softmax attention in transformer graphs and substitute exact or
approximate attention operators, with honest accuracy reports."""

__version__ = "0.1.0"
