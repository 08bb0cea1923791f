"""One rule vocabulary for both finders: a graph-view interface (`view`), a declarative
pattern layer over it (`pattern`) and the rules that recover q, k, v (`operands`).

The ONNX finder (attnrewrite.patterns) reads an onnx-ir graph through `OnnxView`, the torch
finder (attnrewrite.torch.find) an FX graph through `FxView`; both call the same rules.
"""
