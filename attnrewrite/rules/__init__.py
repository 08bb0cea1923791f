"""One rule vocabulary for both finders: a graph-view interface (`view`), a declarative
pattern layer over it (`pattern`), the walks up to Q.K^T and down to P.V (`scores`,
`probs`), the rules that recover q, k, v (`operands`) and an inlined softmax (`softmax`),
what each score step does when replayed on a zero score (`replay`), and the record of a
match with the tags that name its form (`candidate`, `variants`).

The ONNX finder (attnrewrite.patterns) reads an onnx-ir graph through `OnnxView`, the torch
finder (attnrewrite.torch.find) an FX graph through `FxView`; both call the same rules.
"""
