"""The attention pattern library: anchors, walks and rules that find softmax attention.

`find_attention(model)` is the entry point; each module holds one kind of rule.
"""

from attnrewrite.patterns.finder import find_attention

__all__ = ["find_attention"]
