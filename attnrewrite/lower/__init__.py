"""Lowering rewritten models and attention kernels through Apache TVM (issue 5).

Needs the optional TVM stack: ``pip install apache-tvm==0.27.0.post1
apache-tvm-ffi==0.1.14.post1 psutil xgboost cloudpickle tornado`` (the ffi pin matters:
0.1.15 segfaults in ``tvm.ir.save_json``, which tuning uses).

- ``relax_import``: a rewritten ONNX model -> Relax module -> compiled artifact folder
  (``build``), and ``load(folder).run(inputs)``; ``errors``: the ``LowerError`` every step
  raises for a model it cannot take.
- ``graph``: ONNX rewrites the import needs (static Loops unrolled, empty Concat operands
  dropped); ``convert``: our converters (DFT) added to TVM's ONNX frontend during the import;
  ``dft``: the complex four-step DFT that converter emits.
- ``kernel``: a standalone kernel (a PrimFunc plus its host constants); ``runner``: one
  compiled for a target and run on numpy arrays.
- ``fft``: batched real FFT / inverse FFT kernels and an FFT causal convolution (the
  conv-basis kernel) in TE, whose stages (``fft_stages``) are small dense DFT matmuls of the
  four-step / Monarch factorisation (``fft_plan``: the split and the DFT matrices).
- ``scan``: PolySketch's block scan (block states, prefix over blocks, query side) in TE;
  ``cumsum``: the vectorised cumulative sum CPU builds legalize ``cumsum`` to.
- ``schedules``: default schedules for every function no record covers (dlight on GPUs, our
  matmul/fallback rules on CPUs); ``fast_math``: float32 exp and softmax with a vectorisable
  exponential on CPUs.
- ``check``: a built library against onnxruntime on the same rewritten model, timed.
- ``targets``: target names and the per-target tuning records in ``attnrewrite/targets/``.
- ``tune``: meta_schedule over the kernels, locally or on an RPC tracker, writing those
  records (only where they beat the default schedules); ``tune_model``: the same for every
  function of a whole model, with a time limit.

The modules import each other at the top, as a DAG (tests/lower/test_module_graph.py checks
it); ``convert``, ``fast_math`` and ``schedules`` import TVM's compiler and are imported inside
the functions that build, so that loading an artifact needs only TVM's runtime and
``attnrewrite tune --help`` no TVM.

Nothing here is imported by the rest of the package: ``import attnrewrite`` never needs TVM.
"""

from __future__ import annotations

from attnrewrite.lower.relax_import import Artifact, build, load

__all__ = ["Artifact", "build", "load"]
