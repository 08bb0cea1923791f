"""Lowering rewritten models and attention kernels through Apache TVM (issue 5).

Needs the optional TVM stack: ``pip install apache-tvm==0.27.0.post1
apache-tvm-ffi==0.1.14.post1 psutil xgboost cloudpickle tornado`` (the ffi pin matters:
0.1.15 segfaults in ``tvm.ir.save_json``, which tuning uses).

- ``relax_import``: a rewritten ONNX model -> Relax module -> compiled artifact folder
  (``build``), and ``load(folder).run(inputs)``.
- ``graph``: ONNX rewrites the import needs (static Loops unrolled, empty Concat operands
  dropped); ``convert``: our converters (DFT) added to TVM's ONNX frontend during the import.
- ``fft``: a batched real FFT / inverse FFT in TE whose stages are small dense DFT matmuls
  (four-step / Monarch), a complex DFT for the converter, and an FFT causal convolution (the
  conv-basis kernel).
- ``scan``: PolySketch's block scan (block states, prefix over blocks, query side) in TE.
- ``schedules``: default schedules for every function no record covers (dlight on GPUs, our
  matmul/fallback rules on CPUs); ``fast_math``: float32 exp and softmax with a vectorisable
  exponential on CPUs.
- ``check``: a built library against onnxruntime on the same rewritten model, timed.
- ``targets``: target names and the per-target tuning records in ``attnrewrite/targets/``.
- ``tune``: meta_schedule over the kernels, locally or on an RPC tracker, writing those
  records (only where they beat the default schedules); ``tune_model``: the same for every
  function of a whole model, with a time limit.

Nothing here is imported by the rest of the package: ``import attnrewrite`` never needs TVM.
"""

from __future__ import annotations

from attnrewrite.lower.relax_import import Artifact, build, load

__all__ = ["Artifact", "build", "load"]
