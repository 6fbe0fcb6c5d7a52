"""What the GPU kernels of every cell share: the launch plan, the block's slice of the recurrent
matmul, weight packing and the cooperative launcher.

Launch cost decides the design. A numba.cuda launch costs tens to hundreds of microseconds of host
time, more than a whole time step's arithmetic at the shapes RNNs run at, so the time loop runs on
the GPU: one persistent, grid-synchronised kernel per layer, direction and pass. Each block owns a
slice of ``units`` hidden units; per step it multiplies the previous state (forward) or the gate
gradients (backward) by its slice of ``W_hh``, held in shared memory when it fits, applies the
cell's fused pointwise math to its units, and waits at a grid-wide barrier. What does not depend on
the previous step (the input projection, ``dx``, ``dW_ih``, ``dW_hh``, the bias gradients) is a
large cuBLAS GEMM or CuPy reduction outside the kernel.

The block's matmul ``out (rows, n) = a[b0:b0+rows] (rows, k) @ w (k, n)``:
- ``w`` is packed per block, k-major (``w[k * n + col]``), so a thread's ``TN`` columns are
  adjacent and the lanes of a warp, which share columns, read them as one broadcast.
- ``a`` is staged ``kc`` columns at a time into shared memory, transposed (``a_s[kk, b]`` with a
  row stride of ``rows_pad + 1``: the odd stride keeps the transposing store free of bank
  conflicts), so lanes holding adjacent batch rows read adjacent words.
- Each thread accumulates a ``TB x TN`` register tile over every ``ks``-th k; when the tiles are
  too few to occupy the block (small batch, few units), ``ks`` > 1 splits k across threads and the
  pointwise step sums the ``ks`` partials (:func:`partial_sum`).

Everything here also runs under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) with NumPy arrays
in place of CuPy: the simulator runs one block at a time, so the plan there is a single block,
whose grid barrier is then exact.

:func:`persistent_forward` and :func:`persistent_backward` build those kernels around a cell's
pointwise step, so a cell file holds only its equations (the ``_forward_step``/``_backward_step``
of ``kernels/cpu/<cell>.py``, one unit at a time) and its host wrapper. Every cell's kernel has the
same arguments: outputs, the cell's own arrays as one tuple, inputs, weights, the plan's ints.
"""
import functools
import math
from dataclasses import dataclass

import numpy as np
from numba import config, cuda, typeof

SIMULATOR = bool(config.ENABLE_CUDASIM)

TB = 8  # batch rows per thread tile
TN = 4  # output columns per thread tile
TILE = TB * TN  # a module constant: Numba sizes local arrays from constants only
KS_MAX = 16  # most ways k is split across threads
KC = None  # most columns of ``a`` staged in shared memory at a time (None: all k that fit)
ROWS = None  # most batch rows per chunk (None: the whole batch when it fits)
MIN_KC = 32
STAGE = 16  # global loads each thread has in flight while staging ``a`` (latency, not bandwidth, binds)
THREADS = 32 if SIMULATOR else 256


def array_module(a):
    """cupy for a CuPy array, else numpy (the simulator drives the kernels with NumPy arrays)."""
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def _ceil(a, b):
    return -(-a // b)


@dataclass(frozen=True)
class Plan:
    """How one persistent kernel splits its work; every field is passed to the kernel as an int."""

    units: int  # hidden units per block
    blocks: int
    n: int  # output columns per block, padded to TN
    k: int  # reduction length of the block's matmul
    rows: int  # batch rows per chunk (the batch is walked in chunks when its tile does not fit)
    kc: int
    ks: int
    w_in_smem: int  # 1: the block's weights live in shared memory, 0: read from global memory
    smem_words: int

    def smem_bytes(self, itemsize):
        return self.smem_words * itemsize

    @property
    def kernel_ints(self):
        """The fields a persistent kernel takes after its own arguments, in their order."""
        return self.units, self.n, self.rows, self.kc, self.ks, self.w_in_smem


def _smem_words(k, n, rows, kc, ks, w_in_smem):
    rows_pad = _ceil(rows, TB) * TB
    return w_in_smem * k * n + kc * (rows_pad + 1) + ks * rows_pad * n


@functools.lru_cache(maxsize=None)
def _device_limits():
    """(multiprocessors, shared memory bytes a block may opt in to); each query is a driver call."""
    if SIMULATOR:
        return 1, 1 << 30
    dev = cuda.get_current_device()
    return dev.MULTIPROCESSOR_COUNT, dev.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN


def _halvings(start, stop):
    """start, start/2, ... down to stop (both included, rounded up)."""
    out = [start]
    while out[-1] > stop:
        out.append(max(stop, _ceil(out[-1], 2)))
    return out


def make_plan(B, H, cols_per_unit, k, itemsize):
    """Plan a kernel whose block matmul has ``cols_per_unit`` output columns per owned unit and
    reduction length ``k``. Preference: weights in shared memory, then the whole batch per chunk,
    then as much of k staged at once as fits (every staging round trip is a global-memory latency
    per step). Reads the module's KC and ROWS when called, so the simulator tests can shrink them
    and walk every loop on tiny shapes."""
    sms, smem_limit = _device_limits()
    units = _ceil(H, min(sms, H))
    blocks = _ceil(H, units)
    n = _ceil(cols_per_unit * units, TN) * TN
    kcs = _halvings(min(KC or k, k), min(MIN_KC, k))
    for w_in_smem in (1, 0):
        for rows in _halvings(min(ROWS or B, B), min(TB, B)):
            tiles = _ceil(rows, TB) * (n // TN)
            for kc in kcs:
                ks = max(1, min(KS_MAX, kc, THREADS // tiles))
                words = _smem_words(k, n, rows, kc, ks, w_in_smem)
                if words * itemsize <= smem_limit:
                    return Plan(units, blocks, n, k, rows, kc, ks, w_in_smem, words)
    raise ValueError(f"hidden size {H} needs more shared memory per block than this GPU has")


def pack_forward_weights(xp, w_hh, G, plan):
    """w_hh: (G*H, H) -> (blocks * H * n,): block q's column g*units + u holds row g*H + q*units + u."""
    H = w_hh.shape[1]
    U, blocks = plan.units, plan.blocks
    w = xp.zeros((G, blocks * U, H), dtype=w_hh.dtype)
    w[:, :H] = w_hh.reshape(G, H, H)
    w = w.reshape(G, blocks, U, H).transpose(1, 3, 0, 2).reshape(blocks, H, G * U)
    packed = xp.zeros((blocks, H, plan.n), dtype=w_hh.dtype)
    packed[:, :, : G * U] = w
    return packed.reshape(-1)


def pack_backward_weights(xp, w_hh, plan):
    """w_hh: (G*H, H) -> (blocks * G*H * n,): block q's column u holds column q*units + u of w_hh."""
    GH, H = w_hh.shape
    U, blocks = plan.units, plan.blocks
    w = xp.zeros((GH, blocks * U), dtype=w_hh.dtype)
    w[:, :H] = w_hh
    packed = xp.zeros((blocks, GH, plan.n), dtype=w_hh.dtype)
    packed[:, :, :U] = w.reshape(GH, blocks, U).transpose(1, 0, 2)
    return packed.reshape(-1)


@cuda.jit(device=True, inline=True)
def sigmoid(x, one):
    """Logistic sigmoid in the dtype of ``one`` (a literal 1.0 would promote float32 to float64)."""
    return one / (one + math.exp(-x))


@cuda.jit(device=True, inline=True)
def tanh(x):
    return math.tanh(x)


@cuda.jit(device=True, inline=True)
def load_weights(smem, w, w_len, w_in_smem):
    """Copy this block's packed weights into the front of shared memory when the plan says so."""
    if w_in_smem:
        base = cuda.blockIdx.x * w_len
        for idx in range(cuda.threadIdx.x, w_len, cuda.blockDim.x):
            smem[idx] = w[base + idx]
    cuda.syncthreads()


@cuda.jit(device=True, inline=True)
def _matmul(a, b0, rows, k_len, w, w_base, n, smem, a_off, p_off, kc, ks):
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    lane = tid % 32
    warp = tid // 32
    nwarps = nthreads // 32
    tiles_b = (rows + TB - 1) // TB
    rows_pad = tiles_b * TB
    stride = rows_pad + 1
    tiles = tiles_b * (n // TN)
    acc = cuda.local.array(TILE, a.dtype)
    staged = cuda.local.array(STAGE, a.dtype)
    a_reg = cuda.local.array(TB, a.dtype)
    w_reg = cuda.local.array(TN, a.dtype)
    for first in range(0, tiles * ks, nthreads):
        slot = first + tid
        tile = slot % tiles
        split = slot // tiles
        active = split < ks
        tb = tile % tiles_b
        col0 = (tile // tiles_b) * TN
        for i in range(TILE):
            acc[i] = 0
        for k0 in range(0, k_len, kc):
            # Lanes run along k (coalesced). Each thread issues STAGE loads before its first store so
            # their latencies overlap: its slots cover 2**sk_shift runs of 32 columns and as many
            # rows as the rest of STAGE allows, so narrow chunks still keep STAGE loads in flight.
            # Padding rows are never staged: their sums land in padding and are never read.
            width = min(kc, k_len - k0)
            sk_shift = 0
            while (32 << sk_shift) < width and (1 << sk_shift) < STAGE:
                sk_shift += 1
            sk_mask = (1 << sk_shift) - 1
            slot_rows = STAGE >> sk_shift
            for b_first in range(warp * slot_rows, rows, nwarps * slot_rows):
                for k_first in range(lane, width, 32 << sk_shift):
                    for s in range(STAGE):
                        b = b_first + (s >> sk_shift)
                        kk = k_first + 32 * (s & sk_mask)
                        if b < rows and kk < width:
                            staged[s] = a[b0 + b, k0 + kk]
                    for s in range(STAGE):
                        b = b_first + (s >> sk_shift)
                        kk = k_first + 32 * (s & sk_mask)
                        if b < rows and kk < width:
                            smem[a_off + kk * stride + b] = staged[s]
            cuda.syncthreads()
            if active:
                for kk in range(split, width, ks):
                    a_row = a_off + kk * stride + tb
                    w_row = w_base + (k0 + kk) * n + col0
                    for i in range(TB):
                        a_reg[i] = smem[a_row + i * tiles_b]
                    for q in range(TN):
                        w_reg[q] = w[w_row + q]
                    for i in range(TB):
                        for q in range(TN):
                            acc[i * TN + q] += a_reg[i] * w_reg[q]
            cuda.syncthreads()
        if active:
            for i in range(TB):
                row = p_off + (split * rows_pad + tb + i * tiles_b) * n + col0
                for q in range(TN):
                    smem[row + q] = acc[i * TN + q]
    cuda.syncthreads()


@cuda.jit(device=True, inline=True)
def block_matmul(a, b0, rows, k_len, w, n, smem, kc, ks, w_in_smem):
    """This block's ``a[b0:b0+rows] (rows, k_len) @ w_block (k_len, n)``, left as ``ks`` partial
    sums in shared memory for :func:`partial_sum`. a: (B, k_len) in global memory; w: the packed
    weights of every block (used when they are not in shared memory). The partials stay readable
    until the next call, which passes a block barrier before it overwrites them."""
    w_len = k_len * n
    a_off = w_in_smem * w_len
    rows_pad = (rows + TB - 1) // TB * TB
    p_off = a_off + kc * (rows_pad + 1)
    if w_in_smem:
        _matmul(a, b0, rows, k_len, smem, 0, n, smem, a_off, p_off, kc, ks)
    else:
        _matmul(a, b0, rows, k_len, w, cuda.blockIdx.x * w_len, n, smem, a_off, p_off, kc, ks)


@cuda.jit(device=True, inline=True)
def partial_sum(smem, b, col, rows, k_len, n, kc, ks, w_in_smem):
    """Column ``col`` of chunk row ``b`` of the last :func:`block_matmul`."""
    rows_pad = (rows + TB - 1) // TB * TB
    p_off = w_in_smem * k_len * n + kc * (rows_pad + 1)
    s = smem[p_off + b * n + col]
    for split in range(1, ks):
        s += smem[p_off + (split * rows_pad + b) * n + col]
    return s


@cuda.jit(device=True, inline=True)
def gate_sum(hw, gate):
    """Gate ``gate``'s entry of ``h W_hh^T`` for the unit and row that ``hw`` names (the forward
    kernel hands it to the cell's step): the block's columns hold each gate's units side by side
    (:func:`pack_forward_weights`). Under layer norm the kernel has normalised the product into
    ``normed`` (B, G*H) already, and the entry is read from there."""
    smem, bb, u, units, rows, k_len, n, kc, ks, w_in_smem, normed, b, j = hw
    if normed.shape[0] > 0:
        return normed[b, gate * k_len + j]
    return partial_sum(smem, bb, gate * units + u, rows, k_len, n, kc, ks, w_in_smem)


# -- layer norm across blocks ---------------------------------------------------------------------
# A row's statistics run over all its G*H (or the LSTM's c: H) entries, and each block owns only a
# slice of the units; so each block sums its slice of every row into ``partial`` (B, blocks, 2), a
# grid barrier passes, and every block adds the partials up in the same order (so all hold the same
# totals) into ``row_stats`` (B, 2). The forward sums v and v*v (one pass: mean and E[v^2] - mean^2,
# clamped at 0); backward sums gain*d and gain*d*hat, the two means its gradient needs.

@cuda.jit(device=True, inline=True)
def row_partials(v, hat, gain, G, H, u0, units, partial, backward):
    """This block's sums over its units j (and every gate g, column g*H + j) of each row b of v (B,
    G*H): v and v*v, or with ``backward`` gain*v and gain*v*hat, into partial[b, block]."""
    for b in range(cuda.threadIdx.x, v.shape[0], cuda.blockDim.x):
        s = v[b, 0] * 0
        q = s
        for g in range(G):
            for u in range(units):
                j = u0 + u
                if j < H:
                    x = v[b, g * H + j]
                    if backward:
                        x *= gain[g * H + j]
                        s += x
                        q += x * hat[b, g * H + j]
                    else:
                        s += x
                        q += x * x
        partial[b, cuda.blockIdx.x, 0] = s
        partial[b, cuda.blockIdx.x, 1] = q
    cuda.syncthreads()


@cuda.jit(device=True, inline=True)
def row_totals(partial, row_stats, inv_n, eps, backward):
    """After the grid barrier: each row's totals of :func:`row_partials` over every block, as
    (mean, 1/sqrt(var + eps)) or with ``backward`` the two means, into row_stats (B, 2)."""
    for b in range(cuda.threadIdx.x, partial.shape[0], cuda.blockDim.x):
        s = partial[b, 0, 0]
        q = partial[b, 0, 1]
        for k in range(1, partial.shape[1]):
            s += partial[b, k, 0]
            q += partial[b, k, 1]
        s *= inv_n
        q *= inv_n
        if backward:
            row_stats[b, 0] = s
            row_stats[b, 1] = q
        else:
            row_stats[b, 0] = s
            row_stats[b, 1] = (eps * 0 + 1) / math.sqrt(max(q - s * s, eps * 0) + eps)
    cuda.syncthreads()


@cuda.jit(device=True, inline=True)
def no_finish(y, h, cell, t, b, j, valid, mean, rstd, one):
    """The second forward phase of a cell without one (all but the LSTM's c norm)."""
    pass


@cuda.jit(device=True, inline=True)
def no_pre_step(dh, cell, dy, t, b, j, valid, dh_scale, one):
    """The first backward phase of a cell without one (all but the LSTM's c norm)."""
    pass


@cuda.jit(device=True, inline=True)
def options_forward(y, t, b, j, valid, opts, one):
    """After step t's cell update of unit j, row b: zoneout mixes each zoned state part with its
    value before the step (inside the row's length; y follows h), then the masked h enters ``a``.
    opts: (a, mask, states, zones, saved), kernels/cells.py's cell options."""
    a, mask, states, zones, saved = opts
    if valid:
        for k in range(len(states)):
            z = zones[k]
            if z.shape[0] > 0:
                s, keep = states[k], saved[k]
                new = s[t + 1, b, j]
                if keep.shape[0] > 0:
                    keep[t + 1, b, j] = new
                new = z[t, b, j] * s[t, b, j] + (one - z[t, b, j]) * new
                s[t + 1, b, j] = new
                if k == 0:
                    y[t, b, j] = new
    if mask.shape[0] > 0:
        a[t + 1, b, j] = states[0][t + 1, b, j] * mask[b, j]


def persistent_forward(step, finish=no_finish):
    """The forward kernel of a cell: the whole time loop, each step this block's slice of
    ``a[t] W_hh^T`` and then ``step(y, h, cell, hw, t, b, j, valid, one)`` for each of its units j
    and batch rows b (``valid``: t is inside row b's length; ``gate_sum(hw, g)`` reads gate g of the
    product), then the cell options (:func:`options_forward`), then a grid barrier before the next
    step reads h.

    The kernel's arguments: y: (T, B, H); h: (T+1, B, H) with h[0] set; cell: the tuple of the
    cell's other arrays (and flags) that ``step`` unpacks; lengths: (B,) int32; w: packed W_hh
    (:func:`pack_forward_weights`); one: 1 in the dtype of h; opts: (a, mask, states, zones,
    saved), the cell options of kernels/cells.py (a is h when recurrent dropout is off; states the
    tuple of state arrays, h first); norm: layer norm's arrays (:func:`norm_arrays`; empty without
    it); then the plan's ``kernel_ints`` (units, n, rows, kc, ks, w_in_smem), which :func:`launch`
    appends.

    Layer norm on the recurrent side first writes each step's raw product into hat_h[t], normalises
    it across blocks (:func:`row_partials`) and hands the step ``gain_hh * hat + bias_hh`` through
    ``normed``. With the LSTM's c norm (hat_c not empty) the step leaves c' in hat_c[t] and no h;
    after a second cross-block reduction ``finish(y, h, cell, t, b, j, valid, mean, rstd, one)``
    writes h, and the cell options follow it."""

    @cuda.jit
    def forward(y, h, cell, lengths, w, one, opts, norm, units, n, rows, kc, ks, w_in_smem):
        smem = cuda.shared.array(0, h.dtype)
        T, B, H = y.shape
        a = opts[0]
        gain, bias, hat_h, rstd_h, normed, partial, row_stats, consts, hat_c = norm
        GH = hat_h.shape[2]
        load_weights(smem, w, H * n, w_in_smem)
        grid = cuda.cg.this_grid()
        u0 = cuda.blockIdx.x * units
        for t in range(T):
            for b0 in range(0, B, rows):
                rows_now = min(rows, B - b0)
                block_matmul(a[t], b0, rows_now, H, w, n, smem, kc, ks, w_in_smem)
                for idx in range(cuda.threadIdx.x, rows_now * units, cuda.blockDim.x):
                    bb = idx // units
                    u = idx - bb * units
                    j = u0 + u
                    if j < H:
                        b = b0 + bb
                        if normed.shape[0] > 0:  # the raw product waits in hat_h for its row's statistics
                            for g in range(GH // H):
                                hat_h[t, b, g * H + j] = partial_sum(smem, bb, g * units + u, rows_now, H, n, kc, ks,
                                                                     w_in_smem)
                        else:
                            hw = (smem, bb, u, units, rows_now, H, n, kc, ks, w_in_smem, normed, b, j)
                            valid = t < lengths[b]
                            step(y, h, cell, hw, t, b, j, valid, one)
                            if hat_c.shape[0] == 0:
                                options_forward(y, t, b, j, valid, opts, one)
            if normed.shape[0] > 0:
                cuda.syncthreads()
                row_partials(hat_h[t], hat_h[t], gain, GH // H, H, u0, units, partial[0], False)
                grid.sync()
                row_totals(partial[0], row_stats, consts[1], consts[0], False)
                for idx in range(cuda.threadIdx.x, B * units, cuda.blockDim.x):
                    b = idx // units
                    u = idx - b * units
                    j = u0 + u
                    if j < H:
                        mean, rstd = row_stats[b, 0], row_stats[b, 1]
                        if u0 + u == 0:
                            rstd_h[t, b] = rstd
                        for g in range(GH // H):
                            col = g * H + j
                            x = (hat_h[t, b, col] - mean) * rstd
                            hat_h[t, b, col] = x
                            normed[b, col] = gain[col] * x + bias[col]
                        hw = (smem, 0, u, units, 1, H, n, kc, ks, w_in_smem, normed, b, j)
                        valid = t < lengths[b]
                        step(y, h, cell, hw, t, b, j, valid, one)
                        if hat_c.shape[0] == 0:
                            options_forward(y, t, b, j, valid, opts, one)
            if hat_c.shape[0] > 0:
                cuda.syncthreads()
                row_partials(hat_c[t], hat_c[t], gain, 1, H, u0, units, partial[1], False)
                grid.sync()
                row_totals(partial[1], row_stats, consts[2], consts[0], False)
                for idx in range(cuda.threadIdx.x, B * units, cuda.blockDim.x):
                    b = idx // units
                    j = u0 + idx - b * units
                    if j < H:
                        valid = t < lengths[b]
                        finish(y, h, cell, t, b, j, valid, row_stats[b, 0], row_stats[b, 1], one)
                        options_forward(y, t, b, j, valid, opts, one)
            grid.sync()

    return forward


@cuda.jit(device=True, inline=True)
def zoneout_split(dh, t, b, j, opts, keeps):
    """Before step t's backward of unit j, row b (inside its length): the gradient G reaching each
    zoned state part (for h, dh + dy) splits into z*G, kept in ``keeps`` for the state before the
    step, and (1-z)*G for the cell's update: the part's gradient is scaled by 1-z and the step
    reads dy scaled the same way (the host passes it so)."""
    mask, dstates, zones, dy = opts
    for k in range(len(dstates)):
        keeps[k] = 0
        z = zones[k]
        if z.shape[0] > 0:
            d = dstates[k]
            g = d[b, j]
            if k == 0:
                keeps[k] = z[t, b, j] * (g + dy[t, b, j])
            else:
                keeps[k] = z[t, b, j] * g
            d[b, j] = g - z[t, b, j] * g


@cuda.jit(device=True, inline=True)
def zoneout_add(b, j, opts, keeps):
    """After step t's backward: each zoned part's gradient gets back what zoneout kept for it."""
    mask, dstates, zones, dy = opts
    for k in range(len(dstates)):
        if zones[k].shape[0] > 0:
            dstates[k][b, j] += keeps[k]


def persistent_backward(step, pre_step=no_pre_step):
    """The backward kernel of a cell: BPTT over the whole time loop, each step first
    ``step(dh, dgates_h, cell, dy, t, b, j, valid, one)`` for this block's units j and every batch
    row b, which reads the gradient dh[b, j] that reached the step's output, fills the step's
    recurrent-side gate gradients dgates_h[t] and leaves in dh[b, j] only what does not pass
    through W_hh (zero, or the GRU's direct path), with zoneout's split around it
    (:func:`zoneout_split`); then, after a grid barrier, ``dh += (dgates_h[t] @ W_hh) * mask`` for
    this block's units, as the CPU's GEMM adds into dh (rows past a length have zero gate
    gradients there, so their dh passes through unchanged; the mask is recurrent dropout's).

    The kernel's arguments: dh: (B, H), enters as dhT and leaves as dh0; dgates_h: (T, B, G*H);
    cell: the tuple of the cell's other arrays (and flags) that ``step`` unpacks; dy: (T, B, H),
    as the step reads it (times 1 - zone_h under zoneout on h); lengths: (B,) int32; w: packed
    W_hh (:func:`pack_backward_weights`); one; opts: (mask, dstates, zones, dy as given), the cell
    options (dstates: the tuple of state gradients, dh first); norm: layer norm's arrays
    (:func:`norm_grad_arrays`; empty without it); the plan's ``kernel_ints``, which :func:`launch`
    appends.

    With the LSTM's c norm (dcn not empty) ``pre_step(dh, cell, dy, t, b, j, valid, dh_scale, one)``
    first leaves the gradient of LN_c's output in dcn (dh_scale: 1 - zone_h, what zoneout will
    leave of dh), a cross-block reduction puts its two means in row_stats for ``step``. With the
    recurrent side's norm each step's dgates_h[t] goes back through it into dhw[t] (a second
    reduction) before the recurrent matmul, which then multiplies dhw[t]."""

    @cuda.jit
    def backward(dh, dgates_h, cell, dy, lengths, w, one, opts, norm, units, n, rows, kc, ks, w_in_smem):
        smem = cuda.shared.array(0, dh.dtype)
        T, B, H = dy.shape
        GH = dgates_h.shape[2]
        mask = opts[0]
        zones = opts[2]
        gain, hat_h, rstd_h, dhw, partial, row_stats, consts, gain_c, hat_c, dcn = norm
        keeps = cuda.local.array(2, dh.dtype)
        load_weights(smem, w, GH * n, w_in_smem)
        grid = cuda.cg.this_grid()
        u0 = cuda.blockIdx.x * units
        for t in range(T - 1, -1, -1):
            if dcn.shape[0] > 0:
                for idx in range(cuda.threadIdx.x, B * units, cuda.blockDim.x):
                    b = idx // units
                    j = u0 + idx - b * units
                    if j < H:
                        dh_scale = one
                        if zones[0].shape[0] > 0:
                            dh_scale = one - zones[0][t, b, j]
                        pre_step(dh, cell, dy, t, b, j, t < lengths[b], dh_scale, one)
                cuda.syncthreads()
                row_partials(dcn, hat_c[t], gain_c, 1, H, u0, units, partial[1], True)
                grid.sync()
                row_totals(partial[1], row_stats, consts[2], consts[0], True)
            for idx in range(cuda.threadIdx.x, B * units, cuda.blockDim.x):
                b = idx // units
                j = u0 + idx - b * units
                if j < H:
                    valid = t < lengths[b]
                    if valid:
                        zoneout_split(dh, t, b, j, opts, keeps)
                    step(dh, dgates_h, cell, dy, t, b, j, valid, one)
                    if valid:
                        zoneout_add(b, j, opts, keeps)
            rec = dgates_h
            if dhw.shape[0] > 0:
                rec = dhw
                cuda.syncthreads()
                row_partials(dgates_h[t], hat_h[t], gain, GH // H, H, u0, units, partial[0], True)
                grid.sync()
                row_totals(partial[0], row_stats, consts[1], consts[0], True)
                for idx in range(cuda.threadIdx.x, B * units, cuda.blockDim.x):
                    b = idx // units
                    j = u0 + idx - b * units
                    if j < H:
                        m1, m2, rstd = row_stats[b, 0], row_stats[b, 1], rstd_h[t, b]
                        for g in range(GH // H):
                            col = g * H + j
                            dhw[t, b, col] = rstd * (gain[col] * dgates_h[t, b, col] - m1 - hat_h[t, b, col] * m2)
            grid.sync()
            for b0 in range(0, B, rows):
                rows_now = min(rows, B - b0)
                block_matmul(rec[t], b0, rows_now, GH, w, n, smem, kc, ks, w_in_smem)
                for idx in range(cuda.threadIdx.x, rows_now * units, cuda.blockDim.x):
                    bb = idx // units
                    u = idx - bb * units
                    j = u0 + u
                    if j < H:
                        s = partial_sum(smem, bb, u, rows_now, GH, n, kc, ks, w_in_smem)
                        if mask.shape[0] > 0:
                            s *= mask[b0 + bb, j]
                        dh[b0 + bb, j] += s
            # The next step's pointwise threads read dh written above by other threads of the block.
            cuda.syncthreads()

    return backward


def backward_options(xp, dy, mask, states_grads, zones):
    """(dy as the backward steps read it, the kernel's opts tuple) for the cell options of a
    forward (kernels/cells.py): under zoneout on h the steps read dy * (1 - zone_h)."""
    dy_step = dy if zones[0].shape[0] == 0 else dy * (1 - zones[0])
    return dy_step, (mask, tuple(states_grads), zones, dy)


def norm_arrays(xp, norms, B, plan):
    """The forward kernel's ``norm`` tuple from cells.layer_norm_arrays' (params, hats, rstds,
    consts): (gain_hh, bias_hh, hat_h, rstd_h, normed (B, G*H), partial (2, B, blocks, 2), row_stats
    (B, 2), consts, hat_c); the scratch is empty where the norm is off."""
    params, hats, rstds, consts = norms
    dtype = hats[1].dtype
    on = hats[1].shape[0] > 0 or hats[2].shape[0] > 0
    normed = xp.empty((B, hats[1].shape[2]), dtype) if hats[1].shape[0] else xp.zeros((0, 0), dtype)
    partial = xp.empty((2, B, plan.blocks, 2), dtype) if on else xp.zeros((0, 0, 0, 0), dtype)
    row_stats = xp.empty((B, 2), dtype) if on else xp.zeros((0, 0), dtype)
    return params[2], params[3], hats[1], rstds[1], normed, partial, row_stats, consts, hats[2]


def norm_grad_arrays(xp, norms, B, H, plan):
    """The backward kernel's ``norm`` tuple: (gain_hh, hat_h, rstd_h, dhw (T, B, G*H), partial,
    row_stats, consts, gain_c, hat_c, dcn (B, H)), empty where the norm is off."""
    params, hats, rstds, consts = norms
    dtype = hats[1].dtype
    on = hats[1].shape[0] > 0 or hats[2].shape[0] > 0
    dhw = xp.empty_like(hats[1]) if hats[1].shape[0] else hats[1]
    partial = xp.empty((2, B, plan.blocks, 2), dtype) if on else xp.zeros((0, 0, 0, 0), dtype)
    row_stats = xp.empty((B, 2), dtype) if on else xp.zeros((0, 0), dtype)
    dcn = xp.empty((B, H), dtype) if hats[2].shape[0] else xp.zeros((0, 0), dtype)
    return params[2], hats[1], rstds[1], dhw, partial, row_stats, consts, params[4], hats[2], dcn


def norm_input_forward(g2, norms):
    """The input side's norm on the whole projection g2: (T*B, G*H), in place, in array code
    (it is one pass over a large array, outside the sequential loop)."""
    params, hats, rstds, consts = norms
    if not hats[0].shape[0]:
        return
    T, B = hats[0].shape[:2]
    xp = array_module(g2)
    centred = g2 - g2.mean(axis=1, keepdims=True)
    rstd = 1 / xp.sqrt((centred * centred).mean(axis=1, keepdims=True) + consts[0])
    hat = hats[0].reshape(T * B, -1)
    hat[...] = centred * rstd
    rstds[0].reshape(T * B)[...] = rstd[:, 0]
    g2[...] = hat * params[0] + params[1]


def norm_input_backward(dg2, norms):
    """(the gradient of x W_ih^T from the input side's gate gradients dg2: (T*B, G*H), (dgain_ih,
    dbias_ih)): dg2 and () without layer norm."""
    params, hats, rstds, consts = norms
    if not hats[0].shape[0]:
        return dg2, ()
    T, B = hats[0].shape[:2]
    hat = hats[0].reshape(T * B, -1)
    d = dg2 * params[0]
    dxw = rstds[0].reshape(T * B, 1) * (d - d.mean(axis=1, keepdims=True) - hat * (d * hat).mean(axis=1, keepdims=True))
    return dxw, ((dg2 * hat).sum(axis=0), dg2.sum(axis=0))


def norm_recurrent_param_grads(dgh2, norms):
    """(dgain_hh, dbias_hh) from the recurrent side's gate gradients of all steps, dgh2: (T*B, G*H)."""
    hats = norms[1]
    T, B = hats[1].shape[:2]
    return (dgh2 * hats[1].reshape(T * B, -1)).sum(axis=0), dgh2.sum(axis=0)


_COMPILED = {}


def _device_array(a):
    """A Numba view of a CuPy array. Numba's own conversion (``cuda.as_cuda_array``) synchronises
    the array's stream, which would stall the host at every launch; everything here runs on the
    one stream CuPy uses, so the view needs no synchronisation."""
    return cuda.from_cuda_array_interface(a.__cuda_array_interface__, owner=a, sync=False)


def _kernel_arg(a):
    """An argument as the compiled kernel takes it: CuPy arrays as Numba views, in tuples too (a
    cell's arrays travel as one tuple; Numba passes its members as separate kernel parameters)."""
    if isinstance(a, tuple):
        return tuple(_kernel_arg(v) for v in a)
    return _device_array(a) if hasattr(a, "__cuda_array_interface__") else a


def _stream():
    import cupy

    ptr = cupy.cuda.get_current_stream().ptr
    return cuda.external_stream(ptr) if ptr else cuda.default_stream()


def launch(kernel, plan, *args):
    """Launch ``kernel`` cooperatively as ``plan.blocks`` blocks over ``args`` (arrays, ints and tuples
    of them; the first an array of the kernel's dtype) followed by the plan's ``kernel_ints``.

    On the GPU the compiled kernel is cached per argument types, its shared-memory opt-in (above
    the 48 KB default) is raised once per size, and residency of the whole grid is checked once.
    """
    args = args + plan.kernel_ints
    if SIMULATOR:
        # The simulator runs a kernel on copies of its array arguments (copied back after), but on
        # the arrays inside tuples themselves; one array passed both ways (h, and h again in the
        # cell options) must stay one memory, so the top-level ones go in wrapped, uncopied.
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        smem = plan.smem_bytes(args[0].dtype.itemsize)
        kernel[plan.blocks, THREADS, 0, smem](*(FakeCUDAArray(a) if isinstance(a, np.ndarray) else a for a in args))
        return
    args = tuple(_kernel_arg(a) for a in args)
    smem = plan.smem_bytes(args[0].dtype.itemsize)
    key = (kernel, tuple(typeof(a) for a in args))
    entry = _COMPILED.get(key)
    if entry is None:
        entry = _COMPILED[key] = {"kernel": kernel.compile(key[1]), "smem": 0, "fits": set()}
    compiled = entry["kernel"]
    if smem > entry["smem"]:
        _opt_in_shared_memory(compiled, smem)
        entry["smem"] = smem
    if (plan.blocks, smem) not in entry["fits"]:
        if plan.blocks > compiled.max_cooperative_grid_blocks(THREADS, smem):
            raise RuntimeError(
                f"{plan.blocks} blocks of {THREADS} threads ({compiled.regs_per_thread()} registers each) "
                f"with {smem} bytes of shared memory cannot all be resident at once on this GPU"
            )
        entry["fits"].add((plan.blocks, smem))
    compiled.launch(args, (plan.blocks, 1, 1), (THREADS, 1, 1), _stream(), smem)


def _opt_in_shared_memory(compiled, nbytes):
    from cuda.bindings import driver

    attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    device = driver.CUdevice(cuda.get_current_device().id)
    (err,) = driver.cuKernelSetAttribute(attr, nbytes, compiled._codelibrary.get_cufunc().handle, device)
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cannot opt in to {nbytes} bytes of shared memory per block: {err}")


def int32_lengths(xp, lengths, T, B):
    """lengths as an int32 array on the device of ``xp`` (all T when None)."""
    if lengths is None:
        return xp.full(B, T, dtype=np.int32)
    return xp.asarray(lengths).astype(np.int32)


def contiguous(xp, *arrays):
    return tuple(xp.ascontiguousarray(a) for a in arrays)


def add_into(grads, computed):
    """A backward kernel's weight and bias gradients: ``computed`` as they are, or added into the
    caller's arrays ``grads`` (an entry of None is skipped) and those returned, as on the CPU."""
    if grads is None:
        return tuple(computed)
    for g, d in zip(grads, computed):
        if g is not None:
            g += d
    return tuple(grads)
