"""Default (untuned) schedules per target, for every PrimFunc that no tuning record covers.

TVM's CPU pipeline lowers what it has not been told how to schedule as plain serial loops: a
1 GFLOP batched matmul of PolySketch's block states ran 1.5 s on 2 cores (0.7 GFLOP/s), and
whole rewritten layers 12-83x slower than onnxruntime. dlight, TVM's rule-based scheduler,
has GPU rules for everything but only two narrow CPU rules (GEMV, row reductions) in 0.27.
The CPU rules here are in dlight's form (``ScheduleRule.apply(func, target, tunable)`` ->
a schedule or None) and reuse its analyses:

- ``CpuMatmul``: any einsum-shaped reduction (dlight's matmul index maps normalise it to
  C[S, I, J] += A[S, I, K] B[S, J, K]); B is packed as [S, K, J] unless its columns are
  already contiguous (per batch entry, while in cache, when there are many), so that a
  register tile of ``rows`` x (2 vectors) accumulates with broadcast-FMA; tiles run in
  parallel; prologue blocks are inlined into the packing copies and epilogue blocks into the
  output copy.
- dlight's own ``cpu.Reduction`` for softmax-like row reductions (rows in parallel, the
  elementwise stages vectorised): the multipole layer's softmax at n = 4096, 18 -> 9 ms.
- ``CpuFallback``: every other block gets its leading spatial loops fused and run in
  parallel, and its innermost loop vectorised when that loop is spatial.

``schedule_gpu`` and ``schedule_cpu`` apply rules one function at a time: where a rule raises
on a pattern it does not handle, that function gets the last resort (dlight's Fallback on GPUs,
where thread binding is mandatory; no schedule on CPUs) instead of failing the build.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.analysis.common_analysis import get_root_block
from tvm.s_tir.dlight.gpu.matmul import (
    auto_inline_consumer_chain,
    auto_inline_producers,
    get_index_map,
    get_reduction_blocks,
)
from tvm.target import Target
from tvm.target.codegen import llvm_get_vector_width


def _lanes(target: Target, bits: int) -> int:
    """SIMD lanes of ``bits``-wide elements on an llvm target (128-bit vectors if unknown)."""
    width = llvm_get_vector_width(target)
    return max((width if width > 0 else 128) // bits, 1)


def _parallel_vectorize(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Run the block's leading spatial loops as one parallel loop and, when every loop is
    spatial, vectorise the innermost (split to ``lanes`` when it divides). Loops must still
    be one per block iterator (a fresh block)."""
    loops = sch.get_loops(block)
    kinds = [v.iter_type == tirx.IterVar.DataPar for v in sch.get(block).iter_vars]
    if not loops or len(kinds) != len(loops):
        return
    leading = kinds.index(False) if False in kinds else len(kinds)
    if leading == len(loops):
        extent = sch.get(loops[-1]).extent
        size = extent.value if isinstance(extent, tirx.IntImm) else 0
        if size > lanes and size % lanes == 0:
            outer, inner = sch.split(loops[-1], [None, lanes])
            sch.vectorize(inner)
            loops = [*loops[:-1], outer]
        elif 1 < size <= lanes and len(loops) > 1:
            sch.vectorize(loops[-1])
            loops = loops[:-1]
            leading -= 1
    if leading:
        sch.parallel(sch.fuse(*loops[:leading]) if leading > 1 else loops[0])


def _try(primitive, block) -> None:
    """Apply a schedule primitive that may not apply here (then leave the block as it is)."""
    try:
        primitive(block)
    except s_tir.ScheduleError:
        return


def _same(sch: s_tir.Schedule, a, b) -> bool:
    return sch.get(a).same_as(sch.get(b))


def _feeds(sch: s_tir.Schedule, producer, consumer) -> bool:
    return any(_same(sch, c, consumer) for c in sch.get_consumers(producer))


def _j_is_innermost_in_b(block: tirx.SBlock) -> bool:
    """Whether B's innermost index is an output column iterator J: then B is read along its
    contiguous axis as it is, and packing it would only copy it (measured 102 -> 16 GFLOP/s)."""

    def used(region) -> set:
        return {v for r in region for v in tirx.analysis.undefined_vars(r.min)}

    last = block.reads[1].region[-1].min
    return last in used(block.writes[0].region) - used(block.reads[0].region)


class CpuMatmul(dl.ScheduleRule):
    """Einsum-shaped reductions: packed B, register-tiled broadcast-FMA, parallel tiles."""

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(get_root_block(sch))
        reductions = get_reduction_blocks(sch, blocks)
        if reductions is None:
            return None
        main = reductions[0]
        if not get_index_map(sch.get(main)):
            return None
        b_j_contiguous = _j_is_innermost_in_b(sch.get(main))
        pack_a = sch.reindex(main, ("read", 0))
        pack_b = sch.reindex(main, ("read", 1))
        out = sch.reindex(main, ("write", 0))
        matmul_map, a_map, b_map, c_map = get_index_map(sch.get(main))
        sch.transform_layout(pack_a, ("write", 0), a_map)
        sch.transform_layout(pack_b, ("write", 0), b_map)
        sch.transform_layout(out, ("read", 0), c_map)
        sch.transform_block_layout(main, matmul_map)
        sch.transform_layout(pack_b, ("write", 0), lambda s, j, k: (s, k, j))

        bits = sch.get(main).writes[0].source.dtype.bits
        lanes = _lanes(target, bits)
        cols = 2 * lanes
        rows = 8 if lanes >= 16 else 4
        sch.pad_einsum(main, [1, rows, cols, 1])
        for pack in (pack_a, pack_b):
            auto_inline_producers(sch, pack)
            if not _feeds(sch, pack, main) or (pack is pack_b and b_j_contiguous):
                sch.compute_inline(pack)  # into its padding copy, or B needs no packing
        _try(sch.reverse_compute_inline, out)  # into the un-padding copy, when there is one
        blocks = sch.get_child_blocks(get_root_block(sch))
        auto_inline_consumer_chain(sch, blocks[-1])
        copies = [b for b in sch.get_child_blocks(get_root_block(sch)) if not _same(sch, b, main)]

        batch, i, j, k = sch.get_loops(main)
        io, ii = sch.split(i, [None, rows])
        jo, ji = sch.split(j, [None, cols])
        sch.reorder(batch, io, jo, k, ii, ji)
        extent = sch.get(batch).extent
        if not b_j_contiguous and isinstance(extent, tirx.IntImm) and extent.value >= 16:
            # many small matmuls (attention per block): B packed per batch entry, inside the
            # parallel batch loop, while it is in cache (Q.K^T per block 11.3 -> 9.0 ms)
            tile = sch.fuse(io, jo)
            sch.parallel(batch)
            b_in = sch.get(main).reads[1].source
            for producer in sch.get_producers(main):
                if sch.get(producer).writes[0].source.same_as(b_in):
                    sch.compute_at(producer, batch, preserve_unit_loops=True)
                    copies = [c for c in copies if not _same(sch, c, producer)]
        else:
            tile = sch.fuse(batch, io, jo)
            sch.parallel(tile)
        sch.unroll(ii)
        sch.vectorize(ji)
        acc = sch.cache_write(main, 0, "local")
        sch.reverse_compute_at(acc, tile, preserve_unit_loops=True)
        _, ai, aj = sch.get_loops(acc)[-3:]
        sch.unroll(ai)
        sch.vectorize(aj)
        sch.decompose_reduction(main, k)
        for block in copies:
            _parallel_vectorize(sch, block, lanes)
        return sch


class CpuFallback(dl.ScheduleRule):
    """Every block at the root: parallel leading spatial loops, vectorised inner spatial loop."""

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        infos = dl.try_inline_contiguous_spatial(sch, infos)
        for info in infos:
            bits = sch.get(info.block_rv).writes[0].source.dtype.bits
            _parallel_vectorize(sch, info.block_rv, _lanes(target, bits))
        return sch


def _gpu_rules() -> list[dl.ScheduleRule]:
    return [
        dl.gpu.Matmul(),
        dl.gpu.GEMV(),
        dl.gpu.Reduction(),
        dl.gpu.GeneralReduction(),
        dl.gpu.Fallback(),
    ]


def _cpu_rules() -> list[dl.ScheduleRule]:
    return [CpuMatmul(), dl.cpu.Reduction(), CpuFallback()]


def _each_function(mod: tvm.IRModule, target: Target, rules, last_resort) -> tvm.IRModule:
    """``rules`` on every unscheduled PrimFunc, one function at a time; where they raise,
    ``last_resort`` (None: leave the function unscheduled)."""
    out = {}
    with target:
        for gvar, func in mod.functions.items():
            one = tvm.IRModule({gvar: func})
            if isinstance(func, tirx.PrimFunc):
                try:
                    one = dl.ApplyDefaultSchedule(*rules())(one)
                except Exception:  # rules assert or raise ScheduleError on what they miss
                    if last_resort is not None:
                        one = dl.ApplyDefaultSchedule(last_resort())(one)
            out[gvar] = one[gvar]
    return tvm.IRModule(out, attrs=mod.attrs)


def schedule_gpu(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """dlight's GPU rules (thread binding); dlight's Reduction asserts on some index
    patterns, which leaves that function to dlight's Fallback."""
    return _each_function(mod, target, _gpu_rules, dl.gpu.Fallback)


def schedule_cpu(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """``CpuMatmul``, dlight's ``cpu.Reduction``, then ``CpuFallback``; a function none of
    them schedules stays serial."""
    return _each_function(mod, target, _cpu_rules, None)


def schedule(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """The default schedules for ``target``'s kind (GPU threads are mandatory on cuda)."""
    return schedule_cpu(mod, target) if target.kind.name == "llvm" else schedule_gpu(mod, target)


def cpu_pipeline(target: Target) -> tvm.transform.Pass:
    """TVM's CPU Relax pipeline with ``schedule_cpu`` after operator fusion, so that the
    fused functions (matmul plus its elementwise prologue and epilogue) are what is
    scheduled. Functions the tuning records scheduled are marked and left alone."""
    from tvm.relax.backend.cpu_generic import pipeline

    @tvm.transform.module_pass(opt_level=0, name="AttnRewriteCpuSchedule")
    def scheduled(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return schedule_cpu(mod, target)

    return tvm.transform.Sequential(
        [
            *pipeline.library_dispatch_passes(target),
            *pipeline.legalize_passes(target),
            scheduled,
            *pipeline.dataflow_lower_passes(target),
            *pipeline.finalize_passes(target),
        ]
    )
