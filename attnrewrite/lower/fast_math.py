"""float32 ``exp`` and ``softmax`` legalized with TVM's polynomial exponential on CPUs.

TVM lowers ``tir.exp`` on llvm to a call of the C library's ``expf`` per element: vectorised
loops fall back to scalar calls, so in a rewritten layer's softmax the exponentials are most
of the time (exact attention at n = 4096, 8 heads: softmax 365 of 690 ms). topi's
``fast_exp`` (range reduction to [-ln2/2, ln2/2], a degree-5 polynomial and an exponent-bit
shift) vectorises: 4M exponentials in 1.35 ms against 8.2 ms, within 2.5e-7 relative of
float64 ``exp`` over [-80, 10] (2 ulp). Inputs below -88.4 give about 1e-38 instead of 0, so a
masked logit (-inf) weighs 1e-38 of the row's largest instead of nothing. Other dtypes keep
``exp`` (``fast_exp`` is float32 only). ``LEGALIZE`` is handed to ``relax.transform.LegalizeOps``
for llvm targets, for builds and model tuning alike, so tuning records match the builds.
"""

from __future__ import annotations

from tvm import relax, topi


def _exp(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    (x,) = call.args
    if str(x.ty.dtype) != "float32":
        return bb.call_te(topi.exp, x)
    return bb.call_te(topi.fast_exp, x)


def _softmax(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    (x,) = call.args
    if str(x.ty.dtype) != "float32":
        return bb.call_te(topi.nn.softmax, x, call.attrs.axis)
    return bb.call_te(topi.nn.fast_softmax, x, call.attrs.axis)


LEGALIZE = {"relax.exp": _exp, "relax.nn.softmax": _softmax}
