# dev/cuda/hopper_emulator.py: a numpy emulation, from the PTX ISA, of the index math of dev/cuda/hopper_blocks.cu
# (the sm_90a building blocks of an FA3-class attention), with its kernels' loops transcribed:
#   - TMA (cp.async.bulk.tensor, CU_TENSOR_MAP_SWIZZLE_128B) writing a box of 64 bf16 columns x rows into shared
#     memory: row r at byte 128 r, then the 128-byte swizzle on the address (bits 4-6 ^= bits 7-9), zeros
#     outside the tensor;
#   - the wgmma shared-memory matrix descriptor (start >> 4 in bits 0-13, LBO >> 4 in 16-29, SBO >> 4 in
#     32-45, swizzle mode in 62-63), encoded to 64 bits and decoded back, and how wgmma reads through it:
#     K-major (8 rows of 128 bytes, SBO to the next 8 rows, the k-step by adding 32 bytes to the start) and
#     MN-major with the transpose bit (8 k-rows of 128 bytes, SBO to the next 8 k-rows, LBO to the next 64 MN
#     columns), the swizzle applied to the summed address;
#   - the m64nN fp32 accumulator layout and the register-A bf16 fragment layout per thread of the warpgroup;
#   - the full/empty mbarrier ring (phases, parities, expect_tx) under random interleavings of the producer
#     and the two consumer warpgroups, checking that no stage is overwritten while read and each block is read
#     once, whole;
#   - the attention kernel (attention_sm90_kernel) transcribed loop for loop, one block at a time and with FA3's
#     intra-warpgroup overlap (S(j) and PV(j-1) in flight together, the stage of j-1 released after PV(j-1)),
#     compared with float64 attention.
# It proves the layouts are consistent with each other and with the kernels' loops as written; it cannot prove
# what only the hardware shows (mbarrier timing and memory ordering, TMA's real behaviour, setmaxnreg, the
# compiler). The self-test perturbs one detail at a time (the swizzle XOR, SBO, LBO, the k-step, the fragment
# order, the ring's parity, the overlapped loop's rescale order) and requires each to FAIL.
# Run: /usr/bin/python3 dev/cuda/hopper_emulator.py [seed]
import sys
import numpy as np

BM_WG, CONSUMERS, BN, STAGES, SLAB = 64, 2, 64, 2, 64
BM = BM_WG * CONSUMERS


def bf(x):  # round to nearest even bf16, kept in float32
    x = np.asarray(x, dtype=np.float32)
    u = np.ascontiguousarray(x).reshape(-1).view(np.uint32).astype(np.uint64)
    u = (u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))) & np.uint64(0xFFFF0000)
    return u.astype(np.uint32).view(np.float32).reshape(x.shape)


class Layout:
    """The details the self-test perturbs; the defaults are what hopper_blocks.cu does."""
    def __init__(self, **kw):
        self.swizzle_xor = True      # hardware 128 B swizzle on both the TMA write and the wgmma read
        self.read_swizzle_shift = 7  # wgmma's swizzle: bits 4-6 ^= bits (shift .. shift + 2)
        self.sbo = 1024              # K-major and MN-major: 8 rows of 128 bytes
        self.k_step_bytes = 32       # K-major: 16 bf16 per k-step
        self.v_lbo = None            # MN-major: None = BN x 128 (the next 64-column slab)
        self.frag_swap = False       # register-A: swap a2a3 and a4a5 (a plausible mistake)
        self.ring_parity_offset = 0  # producer's empty-barrier parity
        self.rescale_before_pv = False  # overlapped loop: O *= corr(j) before PV(j-1) lands (wrong)
        self.__dict__.update(kw)


def swizzle128(byte, shift=7):
    return byte ^ (((byte >> shift) & 7) << 4)


# ---- the descriptor, as smem_desc() encodes it -----------------------------------------------------------
def smem_desc(addr, lbo, sbo):
    return ((addr & 0x3FFFF) >> 4) | (((lbo & 0x3FFFF) >> 4) << 16) | (((sbo & 0x3FFFF) >> 4) << 32) | (1 << 62)


def decode_desc(d):
    assert (d >> 62) & 3 == 1, "swizzle mode must be 1 (128 B)"
    assert (d >> 49) & 7 == 0, "base offset must be 0"
    return (d & 0x3FFF) << 4, ((d >> 16) & 0x3FFF) << 4, ((d >> 32) & 0x3FFF) << 4


class Smem:
    """Shared memory as bf16 values addressed by byte (even bytes only)."""
    def __init__(self, nbytes, lay):
        self.v = np.full(nbytes // 2, np.nan, np.float32)  # never-written bytes are NaN
        self.lay = lay

    def phys(self, logical, reader):
        if not self.lay.swizzle_xor:
            return logical
        return swizzle128(logical, self.lay.read_swizzle_shift if reader else 7)

    def tma_box(self, dst, tensor, col, head, row, rows):
        """cp.async.bulk.tensor.3d: tensor (T, heads, hd); box 64 columns x 1 head x rows, zeros outside."""
        T, _, hd = tensor.shape
        assert dst % 1024 == 0, "128 B swizzle needs 1024-byte aligned boxes"
        r = np.arange(rows)[:, None]; c = np.arange(SLAB)[None, :]
        src_r, src_c = row + r, col + c
        inside = (src_r < T) & (src_c < hd)
        vals = np.where(inside, tensor[np.minimum(src_r, T - 1), head, np.minimum(src_c, hd - 1)], 0.0)
        self.v[self.phys(dst + 128 * r + 2 * c, False) // 2] = vals

    def read_kmajor(self, desc, rows):
        """A (rows x 16) or B (N x 16) K-major: element (r, k) at start + (r // 8) SBO + (r % 8) 128 + 2 k."""
        start, _, sbo = decode_desc(desc)
        r = np.arange(rows)[:, None]; k = np.arange(16)[None, :]
        return self.v[self.phys(start + (r // 8) * sbo + (r % 8) * 128 + 2 * k, True) // 2]

    def read_mnmajor(self, desc, n):
        """B (16 x N) MN-major (transpose bit): element (k, c) at start + (c // 64) LBO + (k // 8) SBO + (k % 8) 128 + 2 (c % 64)."""
        start, lbo, sbo = decode_desc(desc)
        k = np.arange(16)[:, None]; c = np.arange(n)[None, :]
        return self.v[self.phys(start + (c // 64) * lbo + (k // 8) * sbo + (k % 8) * 128 + 2 * (c % 64), True) // 2]


# ---- fragment layouts (PTX ISA: wgmma .m64nNk16 register fragments) ------------------------------------------
def acc_row(t, i):
    return 16 * (t // 32) + (t % 32) // 4 + 8 * ((i // 2) % 2)


def acc_col(t, i):
    return 8 * (i // 4) + 2 * (t % 4) + i % 2


T_IDX = np.arange(128)[:, None]


def acc_index(n):  # (128, n/2) rows and columns of every thread's registers
    i = np.arange(n // 2)[None, :]
    return acc_row(T_IDX, i), acc_col(T_IDX, i)


def a_frag_index():
    """register-A (64 x 16 bf16) per the ISA: a0a1 (g, 2q), a2a3 (g + 8, 2q), a4a5 (g, 2q + 8), a6a7 (g + 8, 2q + 8),
    g = (t % 32) / 4 + 16 (t / 32), q = t % 4."""
    j = np.arange(8)[None, :]
    g = 16 * (T_IDX // 32) + (T_IDX % 32) // 4
    return g + 8 * ((j // 2) % 2), 2 * (T_IDX % 4) + j % 2 + 8 * (j // 4)


def frags_to_matrix(d, n):
    m = np.zeros((64, n))
    r, c = acc_index(n)
    m[r, c] = d
    return m


def wgmma_ss(d, smem, desc_a, desc_b, n, scale_d):  # d (128, n/2) += A B^T, both K-major
    prod = smem.read_kmajor(desc_a, 64).astype(np.float64) @ smem.read_kmajor(desc_b, n).astype(np.float64).T
    r, c = acc_index(n)
    d[:] = (d if scale_d else 0) + prod[r, c]


def wgmma_rs(d, a, smem, desc_b, n):  # d (128, n/2) += A (registers, (128, 8)) B (MN-major)
    A = np.full((64, 16), np.nan)
    r, c = a_frag_index()
    A[r, c] = a
    prod = A @ smem.read_mnmajor(desc_b, n).astype(np.float64)
    rr, cc = acc_index(n)
    d += prod[rr, cc]


def acc_to_a(d, kk, lay):  # acc_to_a(): registers 8 kk .. 8 kk + 7, rounded to bf16
    a = bf(d[:, 8 * kk: 8 * kk + 8])
    if lay.frag_swap:
        a = a[:, [0, 1, 4, 5, 2, 3, 6, 7]]
    return a


# ---- the kernels' loops ----------------------------------------------------------------------------------
def k_at(hd, s):
    return BM * hd * 2 + s * 2 * BN * hd * 2


def v_at(hd, s):
    return k_at(hd, s) + BN * hd * 2


def tma_load_tile(smem, dst, tensor, head, row, rows, hd):  # tma_load_tile<HD>
    for s in range(hd // SLAB):
        smem.tma_box(dst + s * rows * 128, tensor, s * SLAB, head, row, rows)


def wgmma_qk(smem, q, q_rows, k, hd, lay):  # wgmma_qk<HD>
    s = np.zeros((128, BN // 2))
    for kk in range(hd // 16):
        da = smem_desc(q + (kk // 4) * q_rows * 128 + (kk % 4) * lay.k_step_bytes, 16, lay.sbo)
        db = smem_desc(k + (kk // 4) * BN * 128 + (kk % 4) * lay.k_step_bytes, 16, lay.sbo)
        wgmma_ss(s, smem, da, db, BN, kk > 0)
    return s


def wgmma_pv(o, a, smem, v, hd, lay):  # wgmma_pv<HD>
    lbo = BN * 128 if lay.v_lbo is None else lay.v_lbo
    for kk in range(BN // 16):
        wgmma_rs(o, a[kk], smem, smem_desc(v + kk * 16 * 128, lbo, lay.sbo), hd)


def online_softmax(st, s, j):
    """online_softmax(): block j's scores (128, BN/2) -> exp2 probabilities; updates m, l, corr in st."""
    hd, T = st["hd"], st["T"]
    wg_row0 = st["q0"] + st["c"] * BM_WG
    i = np.arange(BN // 2)[None, :]
    key, row = j * BN + acc_col(T_IDX, i), wg_row0 + acc_row(T_IDX, i)
    masked = (j + 1) * BN > wg_row0 + 1 or (j + 1) * BN > T
    scale_log2 = np.float32(1.4426950408889634 / np.sqrt(hd))
    s = np.where(masked & ((key > row) | (key >= T)), -np.inf, s.astype(np.float32) * scale_log2)
    half = (i // 2) % 2  # 0: row acc_row(t, 0), 1: that row + 8
    for r in range(2):
        bm = np.where(half == r, s, -np.inf).max(axis=1)
        bm = bm.reshape(32, 4).max(axis=1).repeat(4)  # shfl_xor 1, 2 over the quad holding the row
        m_new = np.maximum(st["m"][:, r], bm)
        st["corr"][:, r] = np.exp2(st["m"][:, r] - m_new)
        st["m"][:, r] = m_new
    p = np.exp2(s - np.where(half == 0, st["m"][:, :1], st["m"][:, 1:]))
    for r in range(2):
        st["l"][:, r] = st["l"][:, r] * st["corr"][:, r] + np.where(half == r, p, 0).sum(axis=1)
    return p


def rescale_o(st):
    ohalf = (np.arange(st["hd"] // 2)[None, :] // 2) % 2
    st["o"] *= np.where(ohalf == 0, st["corr"][:, :1], st["corr"][:, 1:])


def consumer_block(st, smem, j, stage, lay):
    """One key block of one consumer warpgroup (attention_sm90_kernel<HD, false>'s loop body), 128 threads at once."""
    hd = st["hd"]
    p = online_softmax(st, wgmma_qk(smem, st["c"] * BM_WG * 128, BM, k_at(hd, stage), hd, lay), j)
    rescale_o(st)
    wgmma_pv(st["o"], [acc_to_a(p, kk, lay) for kk in range(BN // 16)], smem, v_at(hd, stage), hd, lay)


def consumer_block_overlap(st, smem, j, stage, lay):
    """attention_sm90_kernel<HD, true>: block j's S with block j-1's PV in flight; O rescaled after PV(j-1)."""
    hd = st["hd"]
    s = wgmma_qk(smem, st["c"] * BM_WG * 128, BM, k_at(hd, stage), hd, lay)
    if lay.rescale_before_pv:
        p = online_softmax(st, s, j)
        rescale_o(st)
    if j > 0:
        wgmma_pv(st["o"], st["a"], smem, v_at(hd, (j - 1) % STAGES), hd, lay)
    if not lay.rescale_before_pv:
        p = online_softmax(st, s, j)
        if j > 0:
            rescale_o(st)
    st["a"] = [acc_to_a(p, kk, lay) for kk in range(BN // 16)]


def consumer_drain_overlap(st, smem, j, lay):
    """after the loop: the last block's PV."""
    wgmma_pv(st["o"], st["a"], smem, v_at(st["hd"], j % STAGES), st["hd"], lay)


def finish_consumer(st, out, lse, h):
    hd, T = st["hd"], st["T"]
    wg_row0 = st["q0"] + st["c"] * BM_WG
    l = st["l"].reshape(32, 4, 2).sum(axis=1).repeat(4, axis=0)  # shfl_xor 1, 2 over the quad
    i = np.arange(hd // 2)[None, :]
    row, col = wg_row0 + acc_row(T_IDX, i), acc_col(T_IDX, i)
    inv = np.where((i // 2) % 2 == 0, 1 / l[:, :1], 1 / l[:, 1:])
    ok = row < T
    out[row[ok], h, col[ok]] = bf(st["o"] * inv)[ok]
    for r in range(2):
        rows = wg_row0 + acc_row(np.arange(128), 2 * r)
        w = (np.arange(128) % 4 == 0) & (rows < T)
        lse[h, rows[w]] = (st["m"][w, r] + np.log2(l[w, r])) * np.log(2.0)


class MBarrier:
    """mbarrier: a phase completes when its pending arrivals reach 0 and its transaction count is 0."""
    def __init__(self, count):
        self.count, self.pending, self.tx, self.phase = count, count, 0, 0

    def arrive(self, expect_tx=0):  # mbarrier.arrive(.expect_tx)
        self.tx += expect_tx
        self.pending -= 1
        self._complete()

    def complete_tx(self, nbytes):  # a TMA transfer landed
        self.tx -= nbytes
        self._complete()

    def _complete(self):
        if self.pending == 0 and self.tx == 0:
            self.phase += 1
            self.pending = self.count

    def passed(self, parity):  # try_wait.parity: the phase of this parity has completed (current phase differs)
        return (self.phase & 1) != parity


def run_cta(q, k, v, row0, q0, q_head, kv_head, nblocks, hd, lay, rng, consume, drain=None):
    """One CTA: produce() and the consumer warpgroups' loops as coroutines in random order, each TMA landing at a
    random later time. q None: tma_ring_kernel (no Q). consume(smem, c, j, stage) is the consumer's work on block
    j; with drain (the overlapped loop) it also reads V of block j - 1, whose stage is released after it, and
    drain(smem, c, j) finishes the last block.
    Returns the errors seen: a stage overwritten while read, a block read from the wrong stage, a deadlock."""
    smem = Smem(BM * hd * 2 + STAGES * 2 * BN * hd * 2, lay)
    q_full, full = MBarrier(1), [MBarrier(1) for _ in range(STAGES)]
    empty = [MBarrier(128 * CONSUMERS) for _ in range(STAGES)]
    in_flight, readers, loaded, errors = [], [set() for _ in range(STAGES)], [None] * STAGES, []

    def producer():
        if q is not None:
            q_full.arrive(BM * hd * 2)
            in_flight.append((q_full, BM * hd * 2, lambda: tma_load_tile(smem, 0, q, q_head, row0 + q0, BM, hd)))
        for j in range(nblocks):
            s = j % STAGES
            if j >= STAGES:
                while not empty[s].passed(((j // STAGES - 1) + lay.ring_parity_offset) & 1):
                    yield
            full[s].arrive(2 * BN * hd * 2)

            def land(s=s, j=j):
                if readers[s]:
                    errors.append(f"the TMA of block {j} overwrote stage {s} while consumer {readers[s]} read it")
                tma_load_tile(smem, k_at(hd, s), k, kv_head, row0 + j * BN, BN, hd)
                tma_load_tile(smem, v_at(hd, s), v, kv_head, row0 + j * BN, BN, hd)
                loaded[s] = j
            in_flight.append((full[s], 2 * BN * hd * 2, land))
            yield

    def consumer(c):
        if q is not None:
            while not q_full.passed(0):
                yield
        for j in range(nblocks):
            s = j % STAGES
            while not full[s].passed((j // STAGES) & 1):
                yield
            if loaded[s] != j:
                errors.append(f"consumer {c} read stage {s} holding block {loaded[s]}, wanted block {j}")
            readers[s].add(c)
            yield  # the wgmmas take a while: let the others run
            consume(smem, c, j, s)
            done = j - (drain is not None)  # the block whose stage this consumer releases now
            if done >= 0:
                readers[done % STAGES].discard(c)
                for _ in range(128):
                    empty[done % STAGES].arrive()
            yield
        if drain is not None and nblocks > 0:
            drain(smem, c, nblocks - 1)
            readers[(nblocks - 1) % STAGES].discard(c)
            for _ in range(128):
                empty[(nblocks - 1) % STAGES].arrive()

    runners = [producer()] + [consumer(c) for c in range(CONSUMERS)]
    alive = list(range(len(runners)))
    for _ in range(100000):
        if not alive and not in_flight:
            return smem, errors
        if in_flight and (not alive or rng.random() < 0.3):
            bar, nbytes, land = in_flight.pop(rng.integers(len(in_flight)))
            land()
            bar.complete_tx(nbytes)
            continue
        who = alive[rng.integers(len(alive))]
        try:
            next(runners[who])
        except StopIteration:
            alive.remove(who)
    return smem, errors + ["deadlock: the ring never drained"]


def attention_emulated(q, k, v, lay, rng, overlap):
    """attention_sm90_kernel<HD, overlap> over its whole grid (tiles longest first, every head and sequence);
    q (B, T, H, hd), k, v (B, T, KV, hd), seen by the maps as B T rows."""
    B, T, H, hd = q.shape
    KV = k.shape[2]
    qf, kf, vf = q.reshape(B * T, H, hd), k.reshape(B * T, KV, hd), v.reshape(B * T, KV, hd)
    out = np.full(q.shape, np.nan); lse = np.full((B, H, T), np.nan)
    errors = []
    for b in range(B):
        for tile in reversed(range((T + BM - 1) // BM)):
            for h in range(H):
                q0 = tile * BM
                nblocks = (min(T, q0 + BM) + BN - 1) // BN
                states = [{"hd": hd, "T": T, "c": c, "q0": q0, "o": np.zeros((128, hd // 2)), "m": np.full((128, 2), -np.inf),
                           "l": np.zeros((128, 2)), "corr": np.zeros((128, 2))} for c in range(CONSUMERS)]
                cta = (qf, kf, vf, b * T, q0, h, h // (H // KV), nblocks, hd, lay, rng)
                if overlap:
                    _, e = run_cta(*cta, lambda smem, c, j, s: consumer_block_overlap(states[c], smem, j, s, lay),
                                   lambda smem, c, j: consumer_drain_overlap(states[c], smem, j, lay))
                else:
                    _, e = run_cta(*cta, lambda smem, c, j, s: consumer_block(states[c], smem, j, s, lay))
                errors += e
                for st in states:
                    finish_consumer(st, out[b], lse[b], h)
    return out, lse, errors


def attention_f64(q, k, v):  # one sequence: q (T, H, hd), k, v (T, KV, hd)
    T, H, hd = q.shape
    KV = k.shape[1]
    out = np.zeros((T, H, hd)); lse = np.zeros((H, T))
    for h in range(H):
        kh, vh = k[:, h // (H // KV)].astype(np.float64), v[:, h // (H // KV)].astype(np.float64)
        s = q[:, h].astype(np.float64) @ kh.T / np.sqrt(hd)
        s[np.triu_indices(T, 1)] = -np.inf
        mx = s.max(axis=1, keepdims=True)
        p = np.exp(s - mx)
        out[:, h] = p @ vh / p.sum(axis=1, keepdims=True)
        lse[h] = mx[:, 0] + np.log(p.sum(axis=1))
    return out, lse


# ---- the checks: each returns (ok, detail) -----------------------------------------------------------------
def check_ring(lay, rng, hd, T):
    """(a) tma_ring_kernel: K and V blocks of head 1 through the ring, copied out by unswizzling as the kernel does;
    rows past T must come back zero."""
    k = bf(rng.uniform(-1, 1, (T, 3, hd))); v = bf(rng.uniform(-1, 1, (T, 3, hd)))
    nblocks = (T + BN - 1) // BN
    got_k = np.full((nblocks * BN, hd), np.nan); got_v = got_k.copy()

    def copy_out(smem, c, j, s):  # both consumers copy (the kernel splits the elements between them)
        r = np.arange(BN)[:, None]; col = np.arange(hd)[None, :]
        byte = (col // SLAB) * BN * 128 + swizzle128(r * 128 + (col % SLAB) * 2)
        got_k[j * BN: j * BN + BN] = smem.v[(k_at(hd, s) + byte) // 2]
        got_v[j * BN: j * BN + BN] = smem.v[(v_at(hd, s) + byte) // 2]
    _, errors = run_cta(None, k, v, 0, 0, 0, 1, nblocks, hd, lay, rng, copy_out)
    ref_k = np.zeros_like(got_k); ref_v = np.zeros_like(got_v)
    ref_k[:T] = k[:, 1]; ref_v[:T] = v[:, 1]
    ok = not errors and np.array_equal(got_k, ref_k) and np.array_equal(got_v, ref_v)
    return ok, "; ".join(errors[:2]) or f"K/V equal: {np.array_equal(got_k, ref_k)}/{np.array_equal(got_v, ref_v)}"


def check_qk(lay, rng, hd):
    """(b) qk_kernel: S = Q K^T, one 64-row tile and 64 keys, both operands K-major through descriptors."""
    q = bf(rng.uniform(-1, 1, (BM_WG, 1, hd))); k = bf(rng.uniform(-1, 1, (BN, 1, hd)))
    smem = Smem(BM * hd * 2 + STAGES * 2 * BN * hd * 2, lay)
    tma_load_tile(smem, 0, q, 0, 0, BM_WG, hd)
    tma_load_tile(smem, BM_WG * hd * 2, k, 0, 0, BN, hd)
    s = frags_to_matrix(wgmma_qk(smem, 0, BM_WG, BM_WG * hd * 2, hd, lay), BN)
    err = np.abs(s - q[:, 0].astype(np.float64) @ k[:, 0].astype(np.float64).T).max()
    return err < 1e-9, f"max |S - Q K^T| = {err:.3g}"


def check_pv(lay, rng, hd):
    """(c) pv_kernel: O = bf16(P) V, P in the accumulator layout converted to register-A fragments, V MN-major."""
    p = rng.uniform(0, 1, (BM_WG, BN)); v = bf(rng.uniform(-1, 1, (BN, 1, hd)))
    smem = Smem(BM * hd * 2 + STAGES * 2 * BN * hd * 2, lay)
    tma_load_tile(smem, 0, v, 0, 0, BN, hd)
    r, c = acc_index(BN)
    d = p[r, c]  # what each thread reads from p_in
    o = np.zeros((128, hd // 2))
    wgmma_pv(o, [acc_to_a(d, kk, lay) for kk in range(BN // 16)], smem, 0, hd, lay)
    err = np.abs(frags_to_matrix(o, hd) - bf(p).astype(np.float64) @ v[:, 0].astype(np.float64)).max()
    return err < 1e-9, f"max |O - bf16(P) V| = {err:.3g}"


def check_attention(lay, rng, hd, B, T, H, KV, overlap):
    """(d) attention_sm90_kernel against float64 attention: the kernel rounds P and O to bf16, so |error| stays
    below 2e-2 for |v| <= 1 (a wrong layout gives errors of order 1, or NaN from unwritten shared memory)."""
    q = bf(rng.uniform(-2, 2, (B, T, H, hd))); k = bf(rng.uniform(-2, 2, (B, T, KV, hd))); v = bf(rng.uniform(-1, 1, (B, T, KV, hd)))
    out, lse, errors = attention_emulated(q, k, v, lay, rng, overlap)
    refs = [attention_f64(q[b], k[b], v[b]) for b in range(B)]
    ref, ref_lse = np.stack([r[0] for r in refs]), np.stack([r[1] for r in refs])
    err = np.abs(out - ref).max() if not np.isnan(out).any() else np.nan
    lse_err = np.abs(lse - ref_lse).max() if not np.isnan(lse).any() else np.nan
    ok = not errors and err <= 2e-2 and lse_err <= 1e-4
    return ok, "; ".join(errors[:2]) or f"max |out - ref64| = {err:.3g}, max |lse - ref64| = {lse_err:.3g}"


def check_descriptor(lay, rng):
    """smem_desc's bit fields round-trip and match the ISA's positions for a known value."""
    d = smem_desc(0x8000 + 32, 8192, 1024)
    ok = d == (((0x8020 >> 4)) | ((8192 >> 4) << 16) | ((1024 >> 4) << 32) | (1 << 62)) and decode_desc(d) == (0x8020, 8192, 1024)
    return ok, f"desc 0x{d:016x}"


def checks(lay, rng, quick=False):
    out = [("descriptor bit fields", check_descriptor(lay, rng))]
    for hd, T in ((64, 5 * BN - 13), (128, 3 * BN + 1)):
        out.append((f"(a) tma ring hd={hd} T={T}", check_ring(lay, rng, hd, T)))
    for hd in (64, 128):
        out.append((f"(b) qk wgmma ss hd={hd}", check_qk(lay, rng, hd)))
        out.append((f"(c) pv wgmma rs hd={hd}", check_pv(lay, rng, hd)))
    shapes = ((64, 1, 129, 2, 1), (128, 2, 77, 2, 1)) if quick else ((64, 1, 1, 1, 1), (64, 1, 129, 2, 1), (64, 1, 300, 2, 2),
                                                                     (64, 3, 77, 2, 2), (128, 1, 37, 1, 1), (128, 1, 200, 4, 2),
                                                                     (128, 2, 130, 4, 1), (128, 1, 257, 2, 1))
    for overlap in (False, True):
        for hd, B, T, H, KV in shapes:
            name = f"(d) attention {'overlap' if overlap else 'plain'} hd={hd} B={B} T={T} H={H} KV={KV}"
            out.append((name, check_attention(lay, rng, hd, B, T, H, KV, overlap)))
    return out


def main():
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else int(np.random.SeedSequence().entropy % 2**31)
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    passed = failed = 0
    for name, (ok, detail) in checks(Layout(), rng):
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
        passed += ok; failed += not ok
    # the self-test: each perturbed layout detail must make some check fail
    perturbations = {
        "wgmma reads the swizzle XOR from bits 8-10, not 7-9": dict(read_swizzle_shift=8),
        "SBO 512 instead of 1024": dict(sbo=512),
        "LBO of V 1024 instead of BN x 128": dict(v_lbo=1024),
        "k-step of 16 bytes instead of 32": dict(k_step_bytes=16),
        "register-A pairs a2a3 / a4a5 swapped": dict(frag_swap=True),
        "producer waits on the wrong empty parity": dict(ring_parity_offset=1),
        "overlapped loop rescales O before PV(j-1) lands": dict(rescale_before_pv=True),
    }
    for what, kw in perturbations.items():
        with np.errstate(all="ignore"):  # a wrong layout reads NaN (never-written) shared memory
            results = checks(Layout(**kw), rng, quick=True)
        bad = [name for name, (ok, _) in results if not ok]
        caught = len(bad) > 0
        print(f"{'PASS' if caught else 'FAIL'} perturbed ({what}) is caught: {len(bad)} of {len(results)} checks fail"
              + (f", e.g. {bad[0]}" if bad else ""))
        passed += caught; failed += not caught
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
