"""Matrix products for the CPU kernels: a register-tiled GEMM compiled by Numba.

:func:`reference_gemm` below is the specification, in a few lines of NumPy; everything after it
computes the same thing fast and is tested against it.

Why not the BLAS Numba's ``np.dot`` calls (the OpenBLAS that NumPy ships)? Three reasons, measured
first on a 2-core AMD EPYC Zen 5 with AVX-512:

- The weights of a recurrent layer are multiplied once per time step. A BLAS call repacks them
  into its panel layout every time; here they are packed once per layer call (:func:`pack_weights`)
  and every step reads the packed copy: 410-440 GFLOP/s for one step at B=32, H=256 against 160.
- A BLAS is built for a fixed set of vector widths, and OpenBLAS can be held to AVX2
  (``OPENBLAS_CORETYPE``) on a machine with AVX-512 (245 GFLOP/s there). Numba compiles this
  module for the CPU it runs on, so the tile uses the widest vectors that CPU has (440-480).
- Two OpenBLAS pools (NumPy's and, while SciPy was a dependency, SciPy's) each kept threads
  spinning; GEMMs on both pools in one training step fought over the two cores. Here every
  product of a step runs on Numba's threads.

On the 2-core AMD EPYC Zen 3 with AVX2 and no AVX-512 the picture is mixed. Large products reach
~89 GFLOP/s on 2 threads (43-46 on one, 55-60% of a core's peak; 62-68 on one thread for blocks
that stay in cache) against NumPy's OpenBLAS 120-167 (61-64 on one thread). The per-step
recurrent products (M = 16-32 rows per core, K = 128-256, N = 512-1024, W_hh packed once) reach
55-60 GFLOP/s per core against OpenBLAS's 43-45, which is why the recurrences still use this GEMM.
The dW GEMMs outside the time loop have a transposed A (dgates^T @ x). Read in place it steps a
whole row of dgates per k, and those reads share a few cache sets: 23-24 GFLOP/s on one core
against 35 for a row-major A. Such an A is now packed into MR-row micro-panels per block and
pass (:func:`_pack_a`, 28-30 on one core). Packing every A (the diff was kept as
/tmp/gemm_apack_experiment.diff) was tried before: +10-30% on large row-major products but -20-40%
on small-N transposed ones, so only the transposed case packs. On a 2-core AVX2 EPYC at 2.0 GHz
(a slower machine than the one above: 57-70 GFLOP/s for OpenBLAS on 2 threads) the products of an
LSTM 2x256 B32 T64 training step run at 47-65 GFLOP/s, the transposed ones at 44-55.

The core is a micro-kernel written in LLVM IR (a Numba ``@intrinsic``): an ``MR x NR`` block of C
stays in vector registers while the loop over k does ``MR * NR / lanes`` fused multiply-adds per
step. ``NR`` is two vectors; ``MR`` fills the register file (12 rows with 32 AVX-512 registers, 6
with 16 AVX2 or 128-bit ones). Around it sits the usual blocking (Goto/BLIS): B in ``NR``-wide
k-major panels (packed, or a row-major matrix read in place), A read in place per ``MC x KC``
block (packed when transposed), and the blocks handed out to the cores one at a time from an
atomic counter (or run on the caller's thread, for callers that split work themselves, like the
recurrences that give each core its own batch rows).

Numba caches compiled code per file; after editing this file, functions in other files that call
it may keep stale code in ``__pycache__``: delete the ``*.nbi``/``*.nbc`` files there.
"""
import contextlib
import ctypes

import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import carray, cfunc, config, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from rnnfast.kernels.cpu.threads import THREADS, run_shared


def reference_gemm(a, b, c, accumulate):
    """The specification: c (+)= a @ b, as the loop over k that the micro-kernel runs.

    a: (M, K) and b: (K, N) of any strides (a transposed operand is a view such as ``x.T``);
    c: (M, N). accumulate: False overwrites c (whatever it held, NaN included), True adds to it;
    with K == 0 the product is zero. Sums in c's dtype, k in order, one outer product (column p of
    A times row p of B) per step. The tuned code rounds differently (fused multiply-adds, KC-deep
    passes), so compare with a tolerance, not for equality.
    """
    total = np.zeros(c.shape, c.dtype)
    for p in range(a.shape[1]):
        total += np.outer(a[:, p], b[p, :])
    c[...] = c + total if accumulate else total


def _vector_bits():
    """Width of the vector registers Numba compiles for: 512, 256 or 128 bits."""
    if config.CPU_NAME in (None, "host"):
        features = llvm.get_host_cpu_features()
        has = lambda name: features.get(name, False)  # noqa: E731
    else:  # a build for a named CPU (NUMBA_CPU_NAME, NUMBA_CPU_FEATURES): go by its feature string
        named = (config.CPU_FEATURES or "").split(",")
        has = lambda name: "+" + name in named  # noqa: E731
    if has("avx512f"):
        return 512
    if has("avx2") or has("avx"):
        return 256
    return 128


VECTOR_BITS = _vector_bits()
MR = 12 if VECTOR_BITS == 512 else 6     # rows of C held in registers (2 * MR accumulators)
KC = 256                                 # depth of a pass: a B panel (KC x NR) stays in L1
MC = 20 * MR                             # rows of A per block: about 240 KB at KC=256, in L2


def panel_width(dtype):
    """NR for a dtype: two vector registers of it."""
    return 2 * VECTOR_BITS // (8 * np.dtype(dtype).itemsize)


def _microkernel(mr, panels=1):
    """An intrinsic computing C[0:mr, 0:panels*NR] (+)= A[0:mr, 0:k] @ B[0:k, 0:panels*NR].

    Arguments: k, a, a_off, a_pstride, a_istride (A[i, p] is a[a_off + p * a_pstride + i * a_istride]),
    b, b_off, b_kstride, b_jstride (column q * NR + j of B at row p is
    b[b_off + q * b_jstride + p * b_kstride + j], so B is packed panels or a row-major matrix read
    in place), c, c_off, ldc (elements between rows of C), accumulate (0 or 1). Arrays are passed
    whole, offsets in elements. Each k feeds ``2 * mr * panels`` independent accumulators; one row
    takes four panels, so that enough multiply-adds are in flight to hide their latency.
    """
    @intrinsic
    def micro(typingctx, k, a, a_off, a_pstride, a_istride, b, b_off, b_kstride, b_jstride, c, c_off, ldc,
              accumulate):
        sig = types.void(k, a, a_off, a_pstride, a_istride, b, b_off, b_kstride, b_jstride, c, c_off, ldc,
                         accumulate)

        def codegen(context, builder, signature, args):
            k, a, a_off, a_pstride, a_istride, b, b_off, b_kstride, b_jstride, c, c_off, ldc, accumulate = args
            dtype = signature.args[1].dtype
            elem = context.get_value_type(dtype)
            lanes = VECTOR_BITS // dtype.bitwidth
            nv = 2 * panels  # vectors per row of the tile: two per panel
            i64 = ir.IntType(64)
            i32 = ir.IntType(32)
            vec = ir.VectorType(elem, lanes)
            vptr = vec.as_pointer()
            align = dtype.bitwidth // 8  # element alignment: panels and rows start anywhere

            def data(arg_index, value):
                return context.make_array(signature.args[arg_index])(context, builder, value).data

            # Pointers to A[0, 0], B[0, 0] and C[0, 0] of this tile, and to the start of each of its
            # mr rows of A. (gep is pointer arithmetic: base + index elements.)
            a0 = builder.gep(data(1, a), [a_off])
            b0 = builder.gep(data(5, b), [b_off])
            c0 = builder.gep(data(9, c), [c_off])
            a_rows = [builder.gep(a0, [builder.mul(ir.Constant(i64, i), a_istride)]) for i in range(mr)]
            # llvm.fma.v8f32 and its kin: x * y + z on whole vectors with one rounding, one vfmadd
            # instruction per call on a CPU with FMA.
            suffix = "v%d%s" % (lanes, "f32" if dtype.bitwidth == 32 else "f64")
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3), "llvm.fma." + suffix)
            zero = ir.Constant(vec, [0.0] * lanes)
            # A shuffle with an all-zero mask copies lane 0 into every lane (a broadcast).
            splat_mask = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
            undef = ir.Constant(vec, ir.Undefined)

            # Three basic blocks: the entry (the code before this intrinsic), the k loop, and done
            # (the C epilogue). With k <= 0 the entry jumps straight to done: the loop body never
            # runs and every total is the zero vector, so C is overwritten with zeros or left as it
            # was (accumulate). Otherwise the loop runs k times and falls through to done.
            entry = builder.block
            loop = builder.append_basic_block("micro.loop")
            done = builder.append_basic_block("micro.done")
            builder.cbranch(builder.icmp_signed(">", k, ir.Constant(i64, 0)), loop, done)

            builder.position_at_end(loop)
            # The loop carries its state in phi nodes, SSA's loop variables: a phi's value depends on
            # the block that jumped here, 0 (the zero vector) from the entry, last trip's result from
            # the loop's tail (wired up by the add_incoming calls below). p is the k index; acc[i][v]
            # is vector v of row i of the C tile: mr * nv vectors that stay in registers for the
            # whole loop, which is what sizes MR.
            p = builder.phi(i64)
            acc = [[builder.phi(vec) for _ in range(nv)] for _ in range(mr)]
            # Row p of B across the tile: nv vectors, two per NR-wide panel (panel q starts
            # q * b_jstride elements on). Unaligned loads, since a panel or row can start anywhere.
            b_row = builder.gep(b0, [builder.mul(p, b_kstride)])
            bv = []
            for v in range(nv):
                panel = builder.gep(b_row, [builder.mul(ir.Constant(i64, v // 2), b_jstride)])
                bv.append(builder.load(builder.bitcast(builder.gep(panel, [ir.Constant(i64, v % 2 * lanes)]), vptr),
                                       align=align))
            # Column p of A, one element per row: load A[i, p], put it in lane 0 of an undefined
            # vector (insertelement) and broadcast it to all lanes (shufflevector); then one FMA
            # per B vector: acc[i][v] + A[i, p] * B[p, v-th vector]. Over k this adds up
            # sum_p A[i, p] * B[p, j] for every j of the tile: the outer-product form of GEMM.
            a_step = builder.mul(p, a_pstride)
            nxt = []
            for i in range(mr):
                ai = builder.load(builder.gep(a_rows[i], [a_step]))
                one_lane = builder.insert_element(undef, ai, ir.Constant(i32, 0))
                splat = builder.shuffle_vector(one_lane, undef, splat_mask)
                nxt.append([builder.call(fma, [splat, bv[v], acc[i][v]]) for v in range(nv)])
            # Next k; loop again while p_next < k. tail is the block that jumps back (the loop
            # body is one block, so it is the loop block itself).
            p_next = builder.add(p, ir.Constant(i64, 1))
            tail = builder.block
            builder.cbranch(builder.icmp_signed("<", p_next, k), loop, done)
            p.add_incoming(ir.Constant(i64, 0), entry)
            p.add_incoming(p_next, tail)
            for i in range(mr):
                for v in range(nv):
                    acc[i][v].add_incoming(zero, entry)
                    acc[i][v].add_incoming(nxt[i][v], tail)

            # done is reached from the entry (k <= 0: totals are zero) or from the loop's tail (the
            # sums after the last k); a phi per accumulator picks the one that applies.
            builder.position_at_end(done)
            totals = []
            for i in range(mr):
                for v in range(nv):
                    total = builder.phi(vec)
                    total.add_incoming(zero, entry)
                    total.add_incoming(nxt[i][v], tail)
                    totals.append(total)
            # The epilogue: C[i, v-th vector] = old + total when accumulating, else total. Both are
            # computed and a select picks one (no branch in the IR); a NaN in C does not leak into an
            # overwrite, since the select drops old + total. C is read either way, which is safe: the
            # tile always lies inside C (partial tiles go through a scratch tile, see _work_item).
            add_old = builder.icmp_signed("!=", accumulate, ir.Constant(i64, 0))
            for i in range(mr):
                c_row = builder.gep(c0, [builder.mul(ir.Constant(i64, i), ldc)])
                for v in range(nv):
                    total = totals[i * nv + v]
                    ptr = builder.bitcast(builder.gep(c_row, [ir.Constant(i64, v * lanes)]), vptr)
                    old = builder.load(ptr, align=align)
                    builder.store(builder.select(add_old, builder.fadd(old, total), total), ptr, align=align)
            return context.get_dummy_value()

        return sig, codegen

    return micro


_micro_full = _microkernel(MR)
_micro_4 = _microkernel(4)
_micro_1 = _microkernel(1)
_micro_1x4 = _microkernel(1, panels=4)


@njit(cache=True, error_model="numpy")
def _tile(mr, k, a, a_off, a_pstride, a_istride, b, b_off, b_kstride, c, c_off, ldc, accumulate):
    """C[0:mr, 0:NR] (+)= A x B-panel for any mr <= MR, from the compiled row counts."""
    if mr == MR:
        _micro_full(k, a, a_off, a_pstride, a_istride, b, b_off, b_kstride, 0, c, c_off, ldc, accumulate)
        return
    i = 0
    while i + 4 <= mr:
        _micro_4(k, a, a_off + i * a_istride, a_pstride, a_istride, b, b_off, b_kstride, 0, c, c_off + i * ldc, ldc,
                 accumulate)
        i += 4
    while i < mr:
        _micro_1(k, a, a_off + i * a_istride, a_pstride, a_istride, b, b_off, b_kstride, 0, c, c_off + i * ldc, ldc,
                 accumulate)
        i += 1


@njit(cache=True)
def _pack(src, nr, transposed):
    """:func:`pack_b` of b = src (K, N), or of b = src.T when ``transposed``; src C-contiguous.
    Flat unsigned indices, and src walked along its rows: 8 against 19-23 ms for a (6400, 512)
    float32 b, which is read row by row and written a panel row (NR values) at a time."""
    K, N = (src.shape[1], src.shape[0]) if transposed else src.shape
    npanels = (N + nr - 1) // nr
    full = N // nr
    out = np.empty((npanels, K, nr), dtype=src.dtype)
    flat, s = out.reshape(-1), src.reshape(-1)
    if transposed:  # b's columns are src's rows: one panel at a time, a row of src per column
        for jp in range(npanels):
            width = min(nr, N - jp * nr)
            base = np.uint64(jp * K * nr)
            for jj in range(nr):
                if jj >= width:
                    for p in range(K):
                        flat[base + np.uint64(p * nr + jj)] = 0
                    continue
                row = np.uint64((jp * nr + jj) * K)
                for p in range(K):
                    flat[base + np.uint64(p * nr + jj)] = s[row + np.uint64(p)]
        return out
    for p in range(K):
        row = np.uint64(p * N)
        for jp in range(full):
            dst = np.uint64(jp * K * nr + p * nr)
            for jj in range(nr):  # a constant trip count once compiled for the dtype's NR
                flat[dst + np.uint64(jj)] = s[row + np.uint64(jp * nr + jj)]
        if full < npanels:
            dst = np.uint64(full * K * nr + p * nr)
            for jj in range(nr):
                j = full * nr + jj
                flat[dst + np.uint64(jj)] = s[row + np.uint64(j)] if j < N else 0
    return out


def pack_b(b, nr):
    """Packs b: (K, N), any strides, into NR-wide k-major panels: (ceil(N / NR), K, NR), zero padded.
    The compiled loop sees only C-contiguous arrays (one specialisation per dtype): a transposed
    weight is read through its transpose, anything else is copied first."""
    if b.flags.f_contiguous and not b.flags.c_contiguous:
        return _pack(b.T, nr, True)
    return _pack(np.ascontiguousarray(b), nr, False)


# While reuse_packing() holds: (id of the packed array's base, address, shape, strides) -> (base,
# packed copy), each weight packed once. The base is kept so that its id cannot be reused meanwhile.
_PACKED = None


@contextlib.contextmanager
def reuse_packing():
    """While it holds, :func:`pack_weights` packs each array once and hands out that copy again: for
    a caller that runs a layer one step per call on weights that do not change meanwhile (decoding),
    where the weights were repacked every call (4 of a batch-1 decoder step's 0.66 ms went to
    ``_pack``). Nothing may write the packed arrays while it holds."""
    global _PACKED
    outer = _PACKED
    _PACKED = {} if outer is None else outer
    try:
        yield
    finally:
        _PACKED = outer


def pack_weights(w_t):
    """:func:`pack_b` with the panel width of w_t's dtype (once per array under :func:`reuse_packing`)."""
    if _PACKED is None:
        return pack_b(w_t, panel_width(w_t.dtype))
    base = w_t if w_t.base is None else w_t.base
    key = (id(base), w_t.ctypes.data, w_t.shape, w_t.strides, w_t.dtype.str)
    if key not in _PACKED:
        _PACKED[key] = (base, pack_b(w_t, panel_width(w_t.dtype)))
    return _PACKED[key][1]


@njit(cache=True, error_model="numpy")
def _pack_a(a, off, si, sp, rows, kc, out):
    """Copies A[0:rows, 0:kc] (A[i, p] = a[off + i * si + p * sp]) into ``out`` as MR-row k-major
    micro-panels: row ir + i, column p of panel ir // MR at out[ir * kc + p * MR + i]. For a
    transposed A (unit stride down the rows), where the tile would otherwise step through memory a
    whole row of the untransposed array per k: at a multiple of 4 KiB those reads all fall in the
    same few cache sets and the block does not stay in cache (24 against 36 GFLOP/s on one AVX2 core
    at dW = dgates^T @ x, 2048 x 1024 x 256). The indices are unsigned so that no negative-index
    check runs per element (37 against 19 us per 120 x 256 block)."""
    full = rows - rows % MR
    for p in range(kc):  # along A's columns: for a transposed A, each one contiguous
        src = np.uint64(off + p * sp)
        for ir in range(0, full, MR):
            dst = np.uint64(ir * kc + p * MR)
            for i in range(MR):
                out[dst + np.uint64(i)] = a[src + np.uint64((ir + i) * si)]
        for i in range(rows - full):
            out[np.uint64(full * kc + p * MR + i)] = a[src + np.uint64((full + i) * si)]


@njit(cache=True, error_model="numpy")
def _work_item(item, nchunks, per, M, N, K, a, si, sp, b, b_jstride, b_kstride, tail, c, ldc, nr, accumulate, edge,
               apack):
    """One item of C: rows ``i0 : i0 + MC`` times B panels ``j_lo : j_hi``, in KC-deep passes.

    Every operand is a flat 1-D array (see :func:`_core`): A[i, p] is a[i * si + p * sp], C[i, j] is
    c[i * ldc + j]. The micro-kernel reads A in place through its strides (one of them is 1): a
    block of A is reused from cache by every panel of the item, so copying it into panels first did
    not pay. Full panel jp of B starts at b[jp * b_jstride] and steps b_kstride per k; the last,
    partial panel (N not a multiple of NR) is ``tail``: (K * NR), zero padded, and goes through the
    scratch tile ``edge`` (MR * NR) so nothing past column N is written.
    """
    npanels = (N + nr - 1) // nr
    i0 = (item // nchunks) * MC
    rows = min(MC, M - i0)
    j_lo = (item % nchunks) * per
    j_hi = min(npanels, j_lo + per)
    full_panels = N // nr
    no_offset = nr - nr  # an int64: a literal 0 as argument would compile _tile a second time
    packed = sp != 1 and rows >= 4
    for p0 in range(0, K, KC):
        kc = min(KC, K - p0)
        add = 1 if (accumulate or p0 > 0) else 0
        if packed:
            _pack_a(a, i0 * si + p0 * sp, si, sp, rows, kc, apack)
        jp = j_lo
        # A few rows (a batch-1 step): four panels per call, each row on its own.
        while rows < 4 and jp + 4 <= min(j_hi, full_panels):
            for i in range(rows):
                _micro_1x4(kc, a, (i0 + i) * si + p0 * sp, sp, si, b, jp * b_jstride + p0 * b_kstride, b_kstride,
                           b_jstride, c, (i0 + i) * ldc + jp * nr, ldc, add)
            jp += 4
        for jp in range(jp, j_hi):
            for ir in range(0, rows, MR):
                mr = min(MR, rows - ir)
                c_off = (i0 + ir) * ldc + jp * nr
                src, a_off, a_pstride, a_istride = a, (i0 + ir) * si + p0 * sp, sp, si
                if packed:
                    src, a_off, a_pstride, a_istride = apack, ir * kc, MR, 1
                if jp < full_panels:
                    _tile(mr, kc, src, a_off, a_pstride, a_istride, b, jp * b_jstride + p0 * b_kstride, b_kstride, c,
                          c_off, ldc, add)
                    continue
                _tile(mr, kc, src, a_off, a_pstride, a_istride, tail, p0 * nr, nr, edge, no_offset, nr, no_offset)
                for i in range(mr):
                    for j in range(N - jp * nr):
                        if add:
                            c[c_off + i * ldc + j] += edge[i * nr + j]
                        else:
                            c[c_off + i * ldc + j] = edge[i * nr + j]


@intrinsic
def _take_item(typingctx, counter):
    """Atomically adds 1 to the int64 at address ``counter`` and returns its old value: the next
    work item for the thread that calls it."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        return builder.atomic_rmw("add", builder.inttoptr(args[0], i64.as_pointer()), ir.Constant(i64, 1), "monotonic")

    return sig, codegen


def _core(a_ptr, b_ptr, tail_ptr, c_ptr, M, N, K, si, sp, b_kstride, b_jstride, ldc, nr, accumulate,
          item_lo, item_hi, nchunks, per, counter):
    """Work items ``item_lo:item_hi`` of C (M, N) (+)= A (M, K) @ B (K, N), on raw pointers.

    This is the one place the GEMM is compiled, once per dtype, as a C callback (:func:`core_address`).
    Numba compiles a caller together with everything it calls: when the kernels called the GEMM as
    an ``@njit`` function, its code (four micro-kernels, the blocking) was optimised again inside
    each of them and inside each of their callers, 50 specialisations and about 100 s of the first
    run's compile time for one LSTM. Called through its address it is compiled once and cached once.
    A is a[i * si + p * sp], B's full panels are at b[jp * b_jstride + p * b_kstride + j], the
    partial last panel is tail (K, NR), C is c[i * ldc + j].

    counter: 0 runs the items in order; otherwise the address of an int64 (starting at item_lo)
    that the threads sharing one product take items from, each the next one free. With fixed
    halves one thread often finished its share at 14 ms while the other took 20-30 (a core slowed
    by something else on the machine, or a partial last row block); taking items as they come
    keeps both busy to the end.
    """
    a = carray(a_ptr, ((M - 1) * si + (K - 1) * sp + 1,))
    full = N // nr
    b = carray(b_ptr, ((full - 1) * b_jstride + (K - 1) * b_kstride + nr if full > 0 else 0,))
    tail = carray(tail_ptr, (K * nr if N % nr else 0,))
    c = carray(c_ptr, ((M - 1) * ldc + N,))
    edge = np.empty(MR * nr, dtype=c.dtype)
    apack = np.empty(MC * KC if sp != 1 else 0, dtype=c.dtype)
    item = _take_item(counter) if counter else item_lo
    while item < item_hi:
        _work_item(item, nchunks, per, M, N, K, a, si, sp, b, b_jstride, b_kstride, tail, c, ldc, nr, accumulate,
                   edge, apack)
        item = _take_item(counter) if counter else item + 1


_CORE_INTS = 15  # the integer arguments of _core after its four pointers
_cores = {}


def _compiled_core(dtype):
    """The compiled :func:`_core` for dtype (float32 or float64), compiled or loaded on first use."""
    dtype = np.dtype(dtype)
    if dtype not in _cores:
        if dtype.type not in (np.float32, np.float64):
            raise TypeError(f"the CPU GEMM takes float32 or float64, got {dtype}")
        ptr = types.CPointer(numba.from_dtype(dtype))
        sig = types.void(ptr, ptr, ptr, ptr, *([types.int64] * _CORE_INTS))
        compiled = cfunc(sig, cache=True, error_model="numpy")(_core)
        call = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 4), *([ctypes.c_int64] * _CORE_INTS))(compiled.address)
        _cores[dtype] = (compiled, call)
    return _cores[dtype]


def core_address(dtype) -> int:
    """Address of the compiled GEMM for dtype: what :func:`gemm_packed_serial` takes as ``core``."""
    return _compiled_core(dtype)[0].address


@intrinsic
def _call_core(typingctx, address, a, b, tail, c, ints):
    """Calls the compiled :func:`_core` at ``address`` with the data pointers of a, b, tail, c and the
    integers in the tuple ``ints`` (as int64). The call is through a run-time address, so a kernel
    that makes it is compiled without the GEMM's code and stays valid in the cache."""
    sig = types.void(address, a, b, tail, c, ints)

    def codegen(context, builder, signature, args):
        address, *arrays, ints = args
        pointers = [context.make_array(ty)(context, builder, value).data
                    for ty, value in zip(signature.args[1:5], arrays)]
        values = [context.cast(builder, builder.extract_value(ints, k), ty, types.int64)
                  for k, ty in enumerate(signature.args[5])]
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(ir.VoidType(), [p.type for p in pointers] + [i64] * len(values))
        builder.call(builder.inttoptr(address, fnty.as_pointer()), pointers + values)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
def gemm_packed_serial(a, bp, c, accumulate, core):
    """c (+)= a @ b on the calling thread, with b packed by :func:`pack_b`; for kernels that share
    work out across the cores themselves (each core its own batch rows).

    a: (M, K) with a unit stride along one axis; bp: (npanels, K, NR) with NR = :func:`panel_width`;
    c: (M, N) with unit column stride and N <= npanels * NR; accumulate: False overwrites c, True
    adds to it; core: :func:`core_address` of the dtype.
    """
    M, K = a.shape
    N = c.shape[1]
    if M == 0 or N == 0:
        return
    if K == 0:
        if not accumulate:
            c[:] = 0
        return
    npanels, _, nr = bp.shape
    size = a.itemsize
    mblocks = (M + MC - 1) // MC
    _call_core(core, a, bp, bp[npanels - 1], c,
               (M, N, K, a.strides[0] // size, a.strides[1] // size, nr, K * nr, c.strides[0] // size, nr,
                1 if accumulate else 0, 0, mblocks, 1, npanels, 0))


# Below this many multiply-adds (about 15 us on one core) a product runs on the caller's thread.
# Waking the other thread costs tens of microseconds when it has gone to sleep, as it has between
# the small products of a batch-1 layer: batch-1 LSTM forward+backward timings scattered from
# 0.52 to 0.88 ms with 1 << 18 here.
SERIAL_BELOW = 1 << 22


def _work_split(M, npanels, threads):
    """Items = (block of MC rows) x (run of ``per`` B panels): at least two per thread and a
    multiple of the thread count, so the cores stay evenly busy when M is one step's batch as
    well as when it is every step's rows. Returns (mblocks, per, nchunks)."""
    mblocks = (M + MC - 1) // MC
    nchunks = 1
    while nchunks < npanels and (mblocks * nchunks < 2 * threads or (mblocks * nchunks) % threads):
        nchunks += 1
    per = (npanels + nchunks - 1) // nchunks
    return mblocks, per, (npanels + per - 1) // per


def _product(a, b, b_kstride, b_jstride, tail, c, accumulate):
    """c (+)= a @ B, the work shared across the cores when it is large. B's full panels are in b
    (read with b_kstride, b_jstride), its partial last panel is tail: (K, NR)."""
    M, K = a.shape
    N = c.shape[1]
    # gemm_packed_serial's guard again, on purpose: that one is compiled, this one Python; njit code
    # cannot call a Python helper, and a shared @njit one would add a dispatch to every product here.
    if M == 0 or N == 0:
        return
    if K == 0:
        if not accumulate:
            c[:] = 0
        return
    size = a.itemsize
    if not (a.strides[0] == size or a.strides[1] == size) or min(a.strides) < 0:
        a = np.ascontiguousarray(a)
    nr = tail.shape[1]
    threads = THREADS if M * N * K >= SERIAL_BELOW else 1
    mblocks, per, nchunks = _work_split(M, (N + nr - 1) // nr, threads)
    items = mblocks * nchunks
    call = _compiled_core(c.dtype)[1]
    args = (a.ctypes.data, b.ctypes.data, tail.ctypes.data, c.ctypes.data, M, N, K, a.strides[0] // size,
            a.strides[1] // size, b_kstride, b_jstride, c.strides[0] // size, nr, int(bool(accumulate)))
    if threads == 1:
        call(*args, 0, items, nchunks, per, 0)
        return
    counter = np.zeros(1, np.int64)  # the next free item, taken atomically (see _core)
    run_shared(lambda k: call(*args, 0, items, nchunks, per, counter.ctypes.data), threads)


def _check(a, b, c):
    if not (a.dtype == b.dtype == c.dtype) or c.shape != (a.shape[0], b.shape[-1]) or (c.size and c.strides[1] != c.itemsize):
        raise ValueError(f"gemm: a {a.dtype}{a.shape}, b {b.dtype}{b.shape} and c {c.dtype}{c.shape} with strides "
                         f"{c.strides}: c must be (M, N) with unit column stride, all of one dtype")


def gemm_packed(a, bp, c, accumulate):
    """c (+)= a @ b with b packed by :func:`pack_b`: bp (npanels, K, NR); the rest as :func:`gemm`."""
    npanels, K, nr = bp.shape
    if npanels == 0:  # N == 0: nothing to write
        return
    _product(a, bp, nr, K * nr, bp[npanels - 1], c, accumulate)


def gemm(a, b, c, accumulate):
    """c (+)= a @ b for 2-D a: (M, K) and b: (K, N) of any strides; c: (M, N) with unit column stride.
    accumulate: False overwrites c, True adds to it. Large products run on all cores.

    A row-major b is read in place (only a partial last panel is copied), so a product such as
    ``dW_hh = dgates^T @ h`` needs no second copy of every step's states; it was as fast or
    faster than packing first (33 against 38 ms at T*B=6400, 4H=2048, H=512). Other layouts are
    packed first, and so are operands whose rows lie a multiple of 4 KiB apart: read in place,
    their rows share a few L1 cache sets and the panel a tile reuses does not stay in L1 (272
    against 375 GFLOP/s at 1024^3).
    """
    _check(a, b, c)
    K, N = b.shape
    aliased = b.strides[0] % 1024 == 0 and a.shape[0] >= 2 * MC
    if b.strides[1] != b.itemsize or b.strides[0] % 4096 == 0 or b.strides[0] < 0 or aliased:
        gemm_packed(a, pack_weights(b), c, accumulate)
        return
    nr = panel_width(c.dtype)
    full = N // nr
    tail = np.zeros((K, nr), c.dtype)
    tail[:, :N - full * nr] = b[:, full * nr:]
    _product(a, b, b.strides[0] // b.itemsize, nr, tail, c, accumulate)


def _float_pair(a, b):
    return a.ndim == 2 and b.ndim == 2 and a.dtype == b.dtype and a.dtype.type in (np.float32, np.float64)


def matmul(a, b):
    """a: (M, K) @ b: (K, N) -> (M, N). Float32/float64 pairs of one dtype go through :func:`gemm`;
    anything else (mixed or integer dtypes) is NumPy's ``@`` with its usual promotion."""
    if not _float_pair(a, b):
        return a @ b
    out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    gemm(a, b, out, False)
    return out
