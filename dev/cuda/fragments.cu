// dev/cuda/fragments.cu: the warp-fragment instructions the attention kernels use (ldmatrix x4 and .trans
// through mst_kernels.cuh's load_a / load_b_nk / load_b_kn, and mma.sync m16n8k16), executed by whatever runs
// this program (the CPU device, or a GPU) on seeded random bf16 tiles, every lane's registers written to a
// file. dev/cuda/fragments_check.py compares them with dev/cuda/attention_emulator.py's numpy emulation of
// the same instructions from the PTX ISA's layouts: ground truth that is not the CPU device's own code.
//   dev/cuda/bin/fragments_cpu OUT.bin [--seed N]
#include "common.h"

static const int ROWS = 16, COLS = 32, LDS = COLS + 8;  // a padded tile, as the attention kernels stage them

// out (per lane, 4 words each): load_a(0, 16), load_b_nk(0, 16), load_b_kn(0, 8); then d = a b + c (floats)
__global__ void fragments_kernel(uint32_t* words, float* d, const bf16* tile_in, const float* c_in) {
    bf16* tile = reinterpret_cast<bf16*>(mst::dynamic_shared_memory());
    int lane = threadIdx.x;
    for (int i = lane; i < ROWS * LDS; i += 32) tile[i] = tile_in[i];
    __syncthreads();
    uint32_t a[4], bnk[4], bkn[4];
    mst::load_a<LDS>(a, tile, 0, 16, lane);
    mst::load_b_nk<LDS>(bnk, tile, 0, 16, lane);
    mst::load_b_kn<LDS>(bkn, tile, 0, 8, lane);
    float c[4];
    for (int e = 0; e < 4; e++) c[e] = c_in[lane * 4 + e];
    mst::mma_m16n8k16_bf16(c, a, bnk);
    for (int e = 0; e < 4; e++) {
        words[lane * 12 + e] = a[e];
        words[lane * 12 + 4 + e] = bnk[e];
        words[lane * 12 + 8 + e] = bkn[e];
        d[lane * 4 + e] = c[e];
    }
}

int main(int argc, char** argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s OUT.bin [--seed N]\n", argv[0]); return 2; }
    const char* path = argv[1];
    parse_args(argc - 1, argv + 1);
    std::vector<float> tile = rand_uniform((size_t)ROWS * LDS, -2.f, 2.f), c = rand_uniform(32 * 4, -1.f, 1.f);
    bf16* d_tile = upload_bf16(tile);  // rounds the host copy to bf16 too
    float* d_c = upload(c);
    uint32_t* d_words = dmalloc<uint32_t>(32 * 12);
    float* d_d = dmalloc<float>(32 * 4);
    mst::launch<fragments_kernel>(1, 32, ROWS * LDS * sizeof(bf16), 0, d_words, d_d, d_tile, d_c);
    CUDA_CHECK(cudaGetLastError());
    std::vector<uint32_t> words = download(d_words, 32 * 12);
    std::vector<float> d = download(d_d, 32 * 4);
    FILE* f = fopen(path, "wb");  // tile (ROWS x LDS fp32), c (32 x 4), words (32 x 12), d (32 x 4)
    bool ok = f && fwrite(tile.data(), 4, tile.size(), f) == tile.size() && fwrite(c.data(), 4, c.size(), f) == c.size() &&
              fwrite(words.data(), 4, words.size(), f) == words.size() && fwrite(d.data(), 4, d.size(), f) == d.size();
    if (f) ok &= fclose(f) == 0;
    if (!ok) { fprintf(stderr, "error: %s: cannot write\n", path); return 1; }
    return finish("fragments");
}
