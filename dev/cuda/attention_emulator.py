# dev/cuda/attention_emulator.py: a numpy emulation, at the level of warp fragments, of the three attention
# kernels in mst_kernels.cuh (forward, dK/dV, dQ; v1 loop structure): ldmatrix (.trans) and mma.m16n8k16 are
# emulated from the PTX ISA fragment layouts, the kernels transcribed loop for loop, and the results compared
# with float64 attention. It checks index arithmetic, fragment layouts, masking and the online softmax on a
# machine without a GPU (not cp.async, barriers or the compiler). Run: /usr/bin/python3 dev/cuda/attention_emulator.py [seed]
# numpy emulation of mst_kernels.cuh attention kernels at the fragment level (ldmatrix, mma.m16n8k16 per PTX)
import numpy as np, sys
INF = np.inf
def bf(x):
    x = np.asarray(x, dtype=np.float32)
    shape = x.shape
    u = np.ascontiguousarray(x).reshape(-1).view(np.uint32).astype(np.uint64)
    u = (u + np.uint64(0x7fff) + ((u >> np.uint64(16)) & np.uint64(1))) & np.uint64(0xffff0000)
    return u.astype(np.uint32).view(np.float32).reshape(shape)
def ldsm(tile, rc, trans=False):
    out = np.zeros((32, 4, 2), np.float32)
    for i in range(32):
        for m in range(4):
            if not trans:
                r, c = rc[8 * m + i // 4]
                out[i, m, 0] = tile[r, c + 2 * (i % 4)]; out[i, m, 1] = tile[r, c + 2 * (i % 4) + 1]
            else:
                for j in range(2):
                    r, c = rc[8 * m + 2 * (i % 4) + j]
                    out[i, m, j] = tile[r, c + i // 4]
    return out
def load_a(tile, r0, c0):
    return ldsm(tile, [(r0 + ((l >> 3) & 1) * 8 + (l & 7), c0 + (l >> 4) * 8) for l in range(32)])
def load_b_nk(tile, n0, k0):
    return ldsm(tile, [(n0 + (l >> 4) * 8 + (l & 7), k0 + ((l >> 3) & 1) * 8) for l in range(32)])
def load_b_kn(tile, k0, n0):
    return ldsm(tile, [(k0 + ((l >> 3) & 1) * 8 + (l & 7), n0 + (l >> 4) * 8) for l in range(32)], True)
def mma(c, a, b):  # c (32,4) acc; a (32,4,2); b (32,2,2)
    A = np.zeros((16, 16)); B = np.zeros((16, 8))
    for l in range(32):
        g, t = l >> 2, l & 3
        A[g, 2*t:2*t+2] = a[l, 0]; A[g+8, 2*t:2*t+2] = a[l, 1]; A[g, 2*t+8:2*t+10] = a[l, 2]; A[g+8, 2*t+8:2*t+10] = a[l, 3]
        B[2*t:2*t+2, g] = b[l, 0]; B[2*t+8:2*t+10, g] = b[l, 1]
    C = A @ B
    for l in range(32):
        g, t = l >> 2, l & 3
        c[l] += np.array([C[g, 2*t], C[g, 2*t+1], C[g+8, 2*t], C[g+8, 2*t+1]], np.float32)
def warp_mma_nk(acc, a, tile, k0, NB):  # acc (NB, 32, 4)
    for nb2 in range(NB // 2):
        b = load_b_nk(tile, nb2 * 16, k0)
        mma(acc[2*nb2], a, b[:, 0:2]); mma(acc[2*nb2+1], a, b[:, 2:4])
def warp_mma_kn(acc, a, tile, k0, NB):
    for nb2 in range(NB // 2):
        b = load_b_kn(tile, k0, nb2 * 16)
        mma(acc[2*nb2], a, b[:, 0:2]); mma(acc[2*nb2+1], a, b[:, 2:4])
def acc_to_a(c0, c1):  # c0, c1 (32,4) -> (32,4,2)
    a = np.zeros((32, 4, 2), np.float32)
    a[:, 0] = bf(c0[:, 0:2]); a[:, 1] = bf(c0[:, 2:4]); a[:, 2] = bf(c1[:, 0:2]); a[:, 3] = bf(c1[:, 2:4])
    return a
def load_tile(ROWS, HD, src_rows, valid):  # src_rows: array of rows (from row 0 of the tile), zero beyond valid
    t = np.zeros((ROWS, HD + 8), np.float32)
    n = max(0, min(ROWS, valid))
    t[:n, :HD] = src_rows[:n]
    return t
lane = np.arange(32); G = lane >> 2; T4 = lane & 3
LOG2E = 1.4426950408889634

def fwd(q, k, v, HD):  # q (B,T,H,HD) k,v (B,T,KV,HD)
    B, T, H, _ = q.shape; KV = k.shape[2]
    BR = BC = 64
    scale = np.float32(1 / np.sqrt(HD)); sl2 = np.float32(scale * LOG2E)
    out = np.full(q.shape, np.nan, np.float32); lse = np.full((B, H, T), np.nan, np.float32)
    nqb = (T + BR - 1) // BR
    for b in range(B):
     for h in range(H):
      kvh = h // (H // KV)
      for qb in range(nqb):
        q0 = qb * BR
        Qs = load_tile(BR, HD, q[b, q0:, h], T - q0)
        for warp in range(4):
            qf = [load_a(Qs, warp * 16, kk * 16) for kk in range(HD // 16)]
            o = np.zeros((HD // 8, 32, 4), np.float32)
            m_a = np.full(32, -INF, np.float32); m_b = m_a.copy(); l_a = np.zeros(32, np.float32); l_b = l_a.copy()
            row_w = q0 + warp * 16; row_a = row_w + G; row_b = row_a + 8
            kend = min(T, q0 + BR); ntiles = (kend + BC - 1) // BC
            for j in range(ntiles):
                k0 = j * BC
                Ks = load_tile(BC, HD, k[b, k0:, kvh], T - k0); Vs = load_tile(BC, HD, v[b, k0:, kvh], T - k0)
                if k0 > row_w + 15: continue
                s = np.zeros((BC // 8, 32, 4), np.float32)
                for kk in range(HD // 16): warp_mma_nk(s, qf[kk], Ks, kk * 16, BC // 8)
                for nb in range(BC // 8):
                    for e in range(4):
                        col = k0 + nb * 8 + 2 * T4 + (e & 1); row = row_a if e < 2 else row_b
                        s[nb, :, e] = np.where((col > row) | (col >= T), -INF, s[nb, :, e])
                mx_a = s[:, :, 0:2].max(axis=(0, 2)); mx_b = s[:, :, 2:4].max(axis=(0, 2))
                # quad reduce
                mx_a = mx_a.reshape(8, 4).max(1).repeat(4); mx_b = mx_b.reshape(8, 4).max(1).repeat(4)
                mn_a = np.maximum(m_a, mx_a); mn_b = np.maximum(m_b, mx_b)
                base_a = np.where(mn_a == -INF, 0, mn_a * sl2).astype(np.float32); base_b = np.where(mn_b == -INF, 0, mn_b * sl2).astype(np.float32)
                with np.errstate(invalid='ignore'):
                    alpha_a = np.exp2(m_a * sl2 - base_a); alpha_b = np.exp2(m_b * sl2 - base_b)
                s[:, :, 0:2] = np.exp2(s[:, :, 0:2] * sl2 - base_a[None, :, None]); s[:, :, 2:4] = np.exp2(s[:, :, 2:4] * sl2 - base_b[None, :, None])
                l_a = l_a * alpha_a + s[:, :, 0:2].sum(axis=(0, 2)); l_b = l_b * alpha_b + s[:, :, 2:4].sum(axis=(0, 2))
                m_a, m_b = mn_a, mn_b
                o[:, :, 0:2] *= alpha_a[None, :, None]; o[:, :, 2:4] *= alpha_b[None, :, None]
                for kk in range(BC // 16):
                    a = acc_to_a(s[2 * kk], s[2 * kk + 1])
                    warp_mma_kn(o, a, Vs, kk * 16, HD // 8)
            l_a = l_a.reshape(8, 4).sum(1).repeat(4); l_b = l_b.reshape(8, 4).sum(1).repeat(4)
            for ln in range(32):
                for rows, lsum, mm, e0 in ((row_a, l_a, m_a, 0), (row_b, l_b, m_b, 2)):
                    r = rows[ln]
                    if r < T:
                        for nb in range(HD // 8):
                            c = nb * 8 + 2 * T4[ln]
                            out[b, r, h, c] = bf(o[nb, ln, e0] / lsum[ln]); out[b, r, h, c + 1] = bf(o[nb, ln, e0 + 1] / lsum[ln])
                        if T4[ln] == 0: lse[b, h, r] = mm[ln] * scale + np.log(lsum[ln])
    return out, lse

def bwd(q, k, v, dout, out, lse, HD):
    B, T, H, _ = q.shape; KV = k.shape[2]; group = H // KV
    scale = np.float32(1 / np.sqrt(HD)); sl2 = np.float32(scale * LOG2E)
    D = np.einsum('bthd,bthd->bht', dout.astype(np.float64), out.astype(np.float64)).astype(np.float32)
    dq = np.full(q.shape, np.nan, np.float32); dk = np.full(k.shape, np.nan, np.float32); dv = np.full(v.shape, np.nan, np.float32)
    BKV, BQ = 64, 32
    for b in range(B):
      for kvh in range(KV):
        for kb in range((T + BKV - 1) // BKV):
          k0 = kb * BKV
          Ks = load_tile(BKV, HD, k[b, k0:, kvh], T - k0); Vs = load_tile(BKV, HD, v[b, k0:, kvh], T - k0)
          for warp in range(4):
            dk_acc = np.zeros((HD // 8, 32, 4), np.float32); dv_acc = np.zeros((HD // 8, 32, 4), np.float32)
            key_w = k0 + warp * 16; key_a = key_w + G; key_b = key_a + 8
            for hh in range(group):
              h = kvh * group + hh
              for q0 in range(k0, T, BQ):
                Qs = load_tile(BQ, HD, q[b, q0:, h], T - q0); dOs = load_tile(BQ, HD, dout[b, q0:, h], T - q0)
                lse2_s = np.array([lse[b, h, q0 + i] * LOG2E if q0 + i < T else INF for i in range(BQ)], np.float32)
                D_s = np.array([D[b, h, q0 + i] if q0 + i < T else 0 for i in range(BQ)], np.float32)
                if key_w > q0 + BQ - 1: continue
                st = np.zeros((BQ // 8, 32, 4), np.float32)
                for kk in range(HD // 16): warp_mma_nk(st, load_a(Ks, warp * 16, kk * 16), Qs, kk * 16, BQ // 8)
                for nb in range(BQ // 8):
                    for e in range(4):
                        qc = nb * 8 + 2 * T4 + (e & 1); qi = q0 + qc; key = key_a if e < 2 else key_b
                        p = np.exp2(st[nb, :, e] * sl2 - lse2_s[qc])
                        st[nb, :, e] = np.where((qi < key) | (key >= T) | (qi >= T), 0, p)
                for kk in range(BQ // 16): warp_mma_kn(dv_acc, acc_to_a(st[2 * kk], st[2 * kk + 1]), dOs, kk * 16, HD // 8)
                dpt = np.zeros((BQ // 8, 32, 4), np.float32)
                for kk in range(HD // 16): warp_mma_nk(dpt, load_a(Vs, warp * 16, kk * 16), dOs, kk * 16, BQ // 8)
                for nb in range(BQ // 8):
                    for e in range(4):
                        qc = nb * 8 + 2 * T4 + (e & 1)
                        dpt[nb, :, e] = st[nb, :, e] * (dpt[nb, :, e] - D_s[qc])
                for kk in range(BQ // 16): warp_mma_kn(dk_acc, acc_to_a(dpt[2 * kk], dpt[2 * kk + 1]), Qs, kk * 16, HD // 8)
            for ln in range(32):
                for key, e0 in ((key_a[ln], 0), (key_b[ln], 2)):
                    if key < T:
                        for nb in range(HD // 8):
                            c = nb * 8 + 2 * T4[ln]
                            dk[b, key, kvh, c:c+2] = bf(dk_acc[nb, ln, e0:e0+2] * scale); dv[b, key, kvh, c:c+2] = bf(dv_acc[nb, ln, e0:e0+2])
    BR, BC = 64, 32
    for b in range(B):
      for h in range(H):
        kvh = h // group
        for qb in range((T + BR - 1) // BR):
          q0 = qb * BR
          Qs = load_tile(BR, HD, q[b, q0:, h], T - q0); dOs = load_tile(BR, HD, dout[b, q0:, h], T - q0)
          for warp in range(4):
            qf = [load_a(Qs, warp * 16, kk * 16) for kk in range(HD // 16)]; dof = [load_a(dOs, warp * 16, kk * 16) for kk in range(HD // 16)]
            row_w = q0 + warp * 16; row_a = row_w + G; row_b = row_a + 8
            l2a = np.array([lse[b, h, r] * LOG2E if r < T else INF for r in row_a], np.float32); l2b = np.array([lse[b, h, r] * LOG2E if r < T else INF for r in row_b], np.float32)
            Da = np.array([D[b, h, r] if r < T else 0 for r in row_a], np.float32); Db = np.array([D[b, h, r] if r < T else 0 for r in row_b], np.float32)
            dq_acc = np.zeros((HD // 8, 32, 4), np.float32)
            kend = min(T, q0 + BR)
            for j in range((kend + BC - 1) // BC):
                k0 = j * BC
                Ks = load_tile(BC, HD, k[b, k0:, kvh], T - k0); Vs = load_tile(BC, HD, v[b, k0:, kvh], T - k0)
                if k0 > row_w + 15: continue
                s = np.zeros((BC // 8, 32, 4), np.float32); dp = np.zeros((BC // 8, 32, 4), np.float32)
                for kk in range(HD // 16):
                    warp_mma_nk(s, qf[kk], Ks, kk * 16, BC // 8); warp_mma_nk(dp, dof[kk], Vs, kk * 16, BC // 8)
                for nb in range(BC // 8):
                    for e in range(4):
                        col = k0 + nb * 8 + 2 * T4 + (e & 1); row = row_a if e < 2 else row_b
                        p = np.exp2(s[nb, :, e] * sl2 - (l2a if e < 2 else l2b))
                        p = np.where((col > row) | (col >= T) | (row >= T), 0, p)
                        s[nb, :, e] = p * (dp[nb, :, e] - (Da if e < 2 else Db))
                for kk in range(BC // 16): warp_mma_kn(dq_acc, acc_to_a(s[2 * kk], s[2 * kk + 1]), Ks, kk * 16, HD // 8)
            for ln in range(32):
                for r, e0 in ((row_a[ln], 0), (row_b[ln], 2)):
                    if r < T:
                        for nb in range(HD // 8):
                            c = nb * 8 + 2 * T4[ln]
                            dq[b, r, h, c:c+2] = bf(dq_acc[nb, ln, e0:e0+2] * scale)
    return dq, dk, dv

def ref(q, k, v, dout):
    B, T, H, HD = q.shape; KV = k.shape[2]; g = H // KV
    q, k, v, dout = (x.astype(np.float64) for x in (q, k, v, dout))
    kk = np.repeat(k, g, axis=2); vv = np.repeat(v, g, axis=2)
    S = np.einsum('bthd,bshd->bhts', q, kk) / np.sqrt(HD)
    mask = np.triu(np.ones((T, T), bool), 1)
    S[:, :, mask] = -np.inf
    lse = np.log(np.exp(S - S.max(-1, keepdims=True)).sum(-1)) + S.max(-1)
    P = np.exp(S - lse[..., None])
    out = np.einsum('bhts,bshd->bthd', P, vv)
    dP = np.einsum('bthd,bshd->bhts', dout, vv)
    Dl = np.einsum('bthd,bthd->bht', dout, out)
    dS = P * (dP - Dl[..., None]) / np.sqrt(HD)
    dq = np.einsum('bhts,bshd->bthd', dS, kk)
    dk = np.einsum('bhts,bthd->bshd', dS, q).reshape(B, T, KV, g, HD).sum(3)
    dv = np.einsum('bhts,bthd->bshd', P, dout).reshape(B, T, KV, g, HD).sum(3)
    return out, lse, dq, dk, dv

def relerr(a, b):
    if np.isnan(a).any(): return float('nan')
    return np.linalg.norm(a - b) / np.linalg.norm(b)

if __name__ == "__main__":  # (dev/cuda/fragments_check.py imports the emulated instructions)
    rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    ok = True
    for (B, T, H, KV, HD) in [(1, 37, 2, 1, 64), (1, 70, 2, 2, 64), (1, 130, 2, 1, 64), (1, 20, 1, 1, 128), (2, 65, 2, 1, 128)]:
        q = bf(rng.uniform(-2, 2, (B, T, H, HD))); k = bf(rng.uniform(-2, 2, (B, T, KV, HD)))
        v = bf(rng.uniform(-1, 1, (B, T, KV, HD))); do = bf(rng.uniform(-1, 1, (B, T, H, HD)))
        out, lse = fwd(q, k, v, HD)
        ro, rl, rdq, rdk, rdv = ref(q, k, v, do)
        dq, dk, dv = bwd(q, k, v, do, out, lse, HD)
        errs = [relerr(out, ro), np.abs(lse - rl).max(), relerr(dq, rdq), relerr(dk, rdk), relerr(dv, rdv)]
        good = all(e < 2e-2 for e in errs)
        ok &= good
        print("B=%d T=%d H=%d KV=%d HD=%d  out %.2e lse %.2e dq %.2e dk %.2e dv %.2e %s" % (B, T, H, KV, HD, *errs, "ok" if good else "BAD"), flush=True)
    print("ALL OK" if ok else "FAILURES")
