// dev/cuda/large_shapes.cu: kernels at llama3-8b shapes (32 query heads, 8 KV heads, head dim 128, d_model
// 4096) and the capacity targets' sequence lengths, T = 524,288 and 1,048,576, where index products pass
// 2^31 (q alone holds T x 4096 elements), the whole sequence and a query block of --attention-blocks 256 in its
// middle: on the CPU device's sampled-block mode, a few blocks of each
// launch run over sparse buffers (allocations past 2 GiB are mapped, not filled) and their rows are checked
// against double-precision references. Built with UBSan as well (make dev/cuda/bin/large_shapes_cpu), so a
// signed overflow in index math is reported where it happens. On a GPU it prints SKIP: there the full
// shapes run in dev/cuda/attention.cu's benchmarks.
#include "common.h"

static const int H = 32, KV = 8, HD = 128, C = 4096, SAMPLED = 3;

// a deterministic bf16 in [-1, 1) for element i of a tensor (no generator state: any row can be made alone)
static uint16_t value_bits(uint64_t tensor, uint64_t i) {
    uint64_t h = (i + 1) * 0x9e3779b97f4a7c15ull ^ tensor * 0xbf58476d1ce4e5b9ull;  // splitmix64's mix
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
    h ^= h >> 31;
    return f2bf_bits((float)(h >> 40) / 8388608.f - 1.f);
}
static float value(uint64_t tensor, uint64_t i) { return bf2f_bits(value_bits(tensor, i)); }

// rows [row, row + count) of a (rows x width) bf16 tensor, filled on the device from value()
static void fill_rows(bf16* d, uint64_t tensor, size_t row, size_t count, size_t width) {
    std::vector<uint16_t> host(count * width);
    for (size_t i = 0; i < host.size(); i++) host[i] = value_bits(tensor, row * width + i);
    CUDA_CHECK(cudaMemcpy(d + row * width, host.data(), host.size() * 2, cudaMemcpyHostToDevice));
}

// the query rows [q0, q0 + n) against the keys [0, q0 + n) (the trainer's --attention-blocks; the whole
// sequence is q0 = 0, n = T)
static void check_attention(int T, int q0, int n) {
    const size_t q_width = (size_t)H * HD, kv_width = (size_t)KV * HD;
    bf16* q = dmalloc<bf16>((size_t)T * q_width);
    bf16* k = dmalloc<bf16>((size_t)T * kv_width);
    bf16* v = dmalloc<bf16>((size_t)T * kv_width);
    bf16* out = dmalloc<bf16>((size_t)T * q_width);
    float* lse = dmalloc<float>((size_t)H * T);
    for (size_t row = 0; row < (size_t)T; row += 65536) {  // every key and value: the sampled queries read them all
        fill_rows(k, 1, row, std::min<size_t>(65536, T - row), kv_width);
        fill_rows(v, 2, row, std::min<size_t>(65536, T - row), kv_width);
    }
    // the query tiles of the blocks that will run (grid (ceil(n/64), H, 1); block x = 0 is the block's last tile)
    int tiles = (n + 63) / 64, end = q0 + n;
    std::vector<std::pair<int, int>> tile_heads;  // (first row, head)
    for (uint32_t b : mst::sampled_blocks(dim3(tiles, H, 1))) {
        int row0 = q0 + (tiles - 1 - (int)(b % tiles)) * 64, head = (int)(b / tiles % H);
        tile_heads.push_back({row0, head});
        fill_rows(q, 3, row0, std::min(64, end - row0), q_width);
    }
    attention_forward(out, lse, q, k, v, 1, T, H, KV, HD, nullptr, q0, n, 0);
    CUDA_CHECK(cudaDeviceSynchronize());
    // references: double precision over the bf16 inputs, 8 rows of each sampled tile (first, last, spread)
    const double scale = 1.0 / sqrt((double)HD);
    std::vector<float> got_o, ref_o, got_l, ref_l;
    for (auto [row0, h] : tile_heads) {
        int kvh = h / (H / KV);
        for (int r : {0, 1, 7, 20, 33, 47, 62, 63}) {
            int t = row0 + r;
            if (t >= end) continue;
            std::vector<double> qr(HD), sc(t + 1), o(HD, 0.0);
            for (int i = 0; i < HD; i++) qr[i] = value(3, (size_t)t * q_width + (size_t)h * HD + i);
            double mx = -1e300;
            for (int s = 0; s <= t; s++) {
                double d = 0;
                for (int i = 0; i < HD; i++) d += qr[i] * value(1, (size_t)s * kv_width + (size_t)kvh * HD + i);
                sc[s] = d * scale;
                mx = std::max(mx, sc[s]);
            }
            double sum = 0;
            for (int s = 0; s <= t; s++) sum += exp(sc[s] - mx);
            for (int s = 0; s <= t; s++) {
                double p = exp(sc[s] - mx) / sum;
                for (int i = 0; i < HD; i++) o[i] += p * value(2, (size_t)s * kv_width + (size_t)kvh * HD + i);
            }
            std::vector<float> row = download_bf16(out + (size_t)t * q_width + (size_t)h * HD, HD);
            for (int i = 0; i < HD; i++) { got_o.push_back(row[i]); ref_o.push_back((float)o[i]); }
            got_l.push_back(download(lse + (size_t)h * T + t, 1)[0]);
            ref_l.push_back((float)(mx + log(sum)));
        }
    }
    char name[128];
    // P is rounded to bf16 before P V (2^-9 relative per weight, averaging out over the keys): 2% of the
    // rows' largest magnitude, which a wrong key range or a misplaced row misses by far
    snprintf(name, sizeof name, "attention fwd out, %d sampled tiles, T=%d, rows %d..%d (llama3-8b heads)", (int)tile_heads.size(),
             T, q0, end - 1);
    compare(name, got_o, ref_o, 2e-2f * max_abs(ref_o) + 1e-6f, 2e-2f);
    snprintf(name, sizeof name, "attention fwd lse, %d sampled tiles, T=%d, rows %d..%d", (int)tile_heads.size(), T, q0, end - 1);
    compare(name, got_l, ref_l, 2e-3f, 1e-3f);
    for (void* p : {(void*)q, (void*)k, (void*)v, (void*)out, (void*)lse}) CUDA_CHECK(cudaFree(p));
}

// RMSNorm over T x 4096 (one warp per row, 4 rows per block): the sampled blocks' rows against the reference
static void check_rmsnorm(int T) {
    bf16* x = dmalloc<bf16>((size_t)T * C);
    bf16* y = dmalloc<bf16>((size_t)T * C);
    bf16* w = dmalloc<bf16>(C);
    float* rstd = dmalloc<float>(T);
    fill_rows(w, 5, 0, 1, C);
    std::vector<int> rows;
    for (uint32_t b : mst::sampled_blocks(dim3((T + 3) / 4, 1, 1)))
        for (int r = 0; r < 4 && 4 * (int)b + r < T; r++) rows.push_back(4 * (int)b + r);
    for (int r : rows) fill_rows(x, 4, r, 1, C);
    rmsnorm_forward(y, rstd, x, w, T, C, 1e-5f, 0);
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<float> got, ref;
    for (int r : rows) {
        double ss = 0;
        for (int i = 0; i < C; i++) { double a = value(4, (size_t)r * C + i); ss += a * a; }
        double inv = 1.0 / sqrt(ss / C + 1e-5);
        std::vector<float> row = download_bf16(y + (size_t)r * C, C);
        for (int i = 0; i < C; i++) { got.push_back(row[i]); ref.push_back((float)(value(5, i) * value(4, (size_t)r * C + i) * inv)); }
    }
    char name[128];
    snprintf(name, sizeof name, "rmsnorm_forward, %zu sampled rows, T=%d x %d", rows.size(), T, C);
    compare(name, got, ref, 1e-6f, 8e-3f);  // one bf16 rounding of the output
    for (void* p : {(void*)x, (void*)y, (void*)w, (void*)rstd}) CUDA_CHECK(cudaFree(p));
}

int main(int argc, char** argv) {
    parse_args(argc, argv);
    if (!mst::on_cpu_device()) {
        printf("SKIP large_shapes (the CPU device's sampled-block mode; a GPU runs the full shapes in attention.cu)\n");
        return finish("large_shapes");
    }
    mst::set_block_sampling(SAMPLED);
    for (int T : {524288, 1048576}) {
        if (g_small && T > 524288) continue;
        check_rmsnorm(T);
        check_attention(T, 0, T);
        // a query block as --attention-blocks 256 makes (ceil(T / 256) rows), placed off every tile boundary
        int n = (T + 255) / 256;
        check_attention(T, T / 2 + 37, n);
    }
    return finish("large_shapes");
}
