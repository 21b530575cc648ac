// mst/ptx.h: the PTX instructions mst's kernels use, one named function each (ThunderKittens' way): inline
// asm when nvcc compiles for a GPU; on the CPU device (mst/cpu_device/), the same function executed by the
// PTX ISA's semantics, stricter than a GPU (asynchronous results land only at their wait; shared memory
// accesses go through the race tracker). Kernels call these and hold no asm and no #ifdef.
//
// Section numbers are the PTX ISA's (version 8.x/9.0): 9.7.14.5.14 mma.m16n8k16, 9.7.14.5.15 ldmatrix,
// 9.7.9.25 cp.async; the sm_90a section below names its own (mbarrier, TMA, wgmma, setmaxnreg).
#pragma once
#include <cstdint>
#ifndef MST_CPU_DEVICE
#include <cuda_runtime.h>
#endif
#include <cuda.h>  // CUtensorMap (a type only: no -lcuda)
#include <cuda_bf16.h>

#ifdef MST_CPU_DEVICE
namespace mst_cpu {
void mma_m16n8k16_bf16(float* c, const uint32_t* a, const uint32_t* b);
void ldmatrix_x4(uint32_t* r, const void* smem, bool transpose);
void cp_async_16(void* smem, const void* global, int src_bytes);
void cp_async_commit();
void cp_async_wait(int pending_groups);
// sm_90a (mst/cpu_device/hopper.cpp)
void mbarrier_init(uint64_t* bar, uint32_t count);
void mbarrier_arrive(uint64_t* bar, uint32_t expect_tx_bytes, bool expect_tx);
bool mbarrier_try_wait_parity(uint64_t* bar, uint32_t parity);
void fence_mbarrier_init();
void fence_proxy_async();
void cp_async_bulk_tensor_load(int dims, void* smem, const CUtensorMap* map, uint64_t* bar, const int32_t* coords);
void wgmma_fence();
void wgmma_commit_group();
void wgmma_wait_group(int pending_groups);
// d (n / 2 fp32 registers) = A (64 x 16) B (16 x n) + (scale_d ? d : 0); A from a_regs (4 x b32, the register
// fragment) when not null, else through desc_a; trans_a / trans_b: M- / N-major in shared memory
void wgmma_m64k16_bf16(float* d, int n, const uint32_t* a_regs, uint64_t desc_a, uint64_t desc_b, bool scale_d, int scale_a,
                       int scale_b, bool trans_a, bool trans_b);
void setmaxnreg(bool increase, int registers);
uint64_t globaltimer();
}  // namespace mst_cpu
#endif

namespace mst {

// The block's dynamic shared memory (the launch's bytes), 1024-byte aligned on the CPU device and 16 on a
// GPU (a kernel needing more rounds its own offsets up).
__device__ __forceinline__ unsigned char* dynamic_shared_memory() {
#ifdef MST_CPU_DEVICE
    return static_cast<unsigned char*>(mst_cpu::dynamic_shared_memory());
#else
    extern __shared__ __align__(16) unsigned char mst_dynamic_smem[];
    return mst_dynamic_smem;
#endif
}

// D = A B + C, m16n8k16, bf16 inputs, fp32 accumulators, all 32 lanes of a warp (fragment layouts: the
// attention section of mst_kernels.cuh). c holds C on entry and D on return.
__device__ __forceinline__ void mma_m16n8k16_bf16(float* c, const uint32_t* a, const uint32_t* b) {
#ifdef MST_CPU_DEVICE
    mst_cpu::mma_m16n8k16_bf16(c, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Four 8x8 b16 matrices from shared memory, all 32 lanes: lane 8i + j gives row j of matrix i; lane l
// receives in r[i] the pair (row l/4, columns 2(l%4), 2(l%4)+1) of matrix i.
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* smem) {
#ifdef MST_CPU_DEVICE
    mst_cpu::ldmatrix_x4(r, smem, false);
#else
    uint32_t address = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address) : "memory");
#endif
}
// the same, transposed: lane l receives (rows 2(l%4), 2(l%4)+1, column l/4) of matrix i
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const void* smem) {
#ifdef MST_CPU_DEVICE
    mst_cpu::ldmatrix_x4(r, smem, true);
#else
    uint32_t address = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address) : "memory");
#endif
}

// 16 bytes global -> shared, asynchronous (.cg: through L2 only); bytes past src_bytes (0 or 16) are zero.
// The data may be read only after cp_async_wait has retired its group.
__device__ __forceinline__ void cp_async_16(void* smem, const void* global, int src_bytes) {
#ifdef MST_CPU_DEVICE
    mst_cpu::cp_async_16(smem, global, src_bytes);
#else
    uint32_t address = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(global), "r"(src_bytes) : "memory");
#endif
}
// closes the group of this thread's cp.async issued since the last commit
__device__ __forceinline__ void cp_async_commit() {
#ifdef MST_CPU_DEVICE
    mst_cpu::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// waits until at most N of this thread's committed groups are pending
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef MST_CPU_DEVICE
    mst_cpu::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// ----------------------------------------------------------------------------
// sm_90a (H100/H200): mbarrier, TMA, wgmma, setmaxnreg, named barriers. On a GPU only the sm_90a pass may call
// these (dev/cuda/hopper_blocks.cu's HOPPER_CODE). Sections: 9.7.13.15 mbarrier, 9.7.13.4 fence,
// 9.7.9.25.5.2 cp.async.bulk.tensor (5.5 tensors and tensor maps), 9.7.15 wgmma, 9.7.19.5 setmaxnreg,
// 9.7.13.1 bar.sync, 10.28 %globaltimer.

// mbarrier.init (9.7.13.15.9): phase 0, `count` arrivals expected per phase, tx-count 0
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t count) {
#ifdef MST_CPU_DEVICE
    mst_cpu::mbarrier_init(bar, count);
#else
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"((uint32_t)__cvta_generic_to_shared(bar)), "r"(count));
#endif
}
// makes prior mbarrier.init visible to other threads' and the async proxy's operations (9.7.13.4)
__device__ __forceinline__ void fence_mbarrier_init() {
#ifdef MST_CPU_DEVICE
    mst_cpu::fence_mbarrier_init();
#else
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}
// orders this thread's prior generic-proxy accesses of shared memory before later async-proxy ones (TMA,
// wgmma operands) (9.7.13.4)
__device__ __forceinline__ void fence_proxy_async() {
#ifdef MST_CPU_DEVICE
    mst_cpu::fence_proxy_async();
#else
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}
// arrive-on (release) (9.7.13.15.13)
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
#ifdef MST_CPU_DEVICE
    mst_cpu::mbarrier_arrive(bar, 0, false);
#else
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"((uint32_t)__cvta_generic_to_shared(bar)) : "memory");
#endif
}
// expect-tx of `bytes`, then arrive-on (9.7.13.15.13, 9.7.13.15.5)
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
#ifdef MST_CPU_DEVICE
    mst_cpu::mbarrier_arrive(bar, bytes, true);
#else
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"((uint32_t)__cvta_generic_to_shared(bar)), "r"(bytes)
                 : "memory");
#endif
}
// whether the phase of parity `parity` has completed (acquire) (9.7.13.15.16); a GPU may return false after a
// time limit, the CPU device blocks the thread until it has (or reports the deadlock)
__device__ __forceinline__ bool mbarrier_try_wait_parity(uint64_t* bar, uint32_t parity) {
#ifdef MST_CPU_DEVICE
    return mst_cpu::mbarrier_try_wait_parity(bar, parity);
#else
    uint32_t done;
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}"
        : "=r"(done) : "r"((uint32_t)__cvta_generic_to_shared(bar)), "r"(parity) : "memory");
    return done;
#endif
}
// %globaltimer, nanoseconds (10.28)
__device__ __forceinline__ uint64_t globaltimer() {
#ifdef MST_CPU_DEVICE
    return mst_cpu::globaltimer();
#else
    uint64_t now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    return now;
#endif
}

// TMA (9.7.9.25.5.2): the box of `map` at the coordinates (innermost first) into shared memory at smem, its
// bytes counted by complete-tx on bar (the whole box, out-of-bounds elements filled included)
__device__ __forceinline__ void cp_async_bulk_tensor_2d(void* smem, const CUtensorMap* map, uint64_t* bar, int c0, int c1) {
#ifdef MST_CPU_DEVICE
    const int32_t coords[2] = {c0, c1};
    mst_cpu::cp_async_bulk_tensor_load(2, smem, map, bar, coords);
#else
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
        ::"r"((uint32_t)__cvta_generic_to_shared(smem)), "l"(map), "r"(c0), "r"(c1), "r"((uint32_t)__cvta_generic_to_shared(bar))
        : "memory");
#endif
}
__device__ __forceinline__ void cp_async_bulk_tensor_3d(void* smem, const CUtensorMap* map, uint64_t* bar, int c0, int c1, int c2) {
#ifdef MST_CPU_DEVICE
    const int32_t coords[3] = {c0, c1, c2};
    mst_cpu::cp_async_bulk_tensor_load(3, smem, map, bar, coords);
#else
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];"
        ::"r"((uint32_t)__cvta_generic_to_shared(smem)), "l"(map), "r"(c0), "r"(c1), "r"(c2),
        "r"((uint32_t)__cvta_generic_to_shared(bar)) : "memory");
#endif
}

__device__ __forceinline__ void cp_async_bulk_tensor_4d(void* smem, const CUtensorMap* map, uint64_t* bar, int c0, int c1, int c2,
                                                        int c3) {
#ifdef MST_CPU_DEVICE
    const int32_t coords[4] = {c0, c1, c2, c3};
    mst_cpu::cp_async_bulk_tensor_load(4, smem, map, bar, coords);
#else
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];"
        ::"r"((uint32_t)__cvta_generic_to_shared(smem)), "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(c3),
        "r"((uint32_t)__cvta_generic_to_shared(bar)) : "memory");
#endif
}

// wgmma (9.7.15.7): fence before the first wgmma.mma_async and after touching its registers; commit_group
// closes the group of the mma_async issued since; wait_group<N> waits until at most N groups are pending. The
// accumulators (and register A fragments) may be read or written only after the wait that retires their group.
__device__ __forceinline__ void wgmma_fence() {
#ifdef MST_CPU_DEVICE
    mst_cpu::wgmma_fence();
#else
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit_group() {
#ifdef MST_CPU_DEVICE
    mst_cpu::wgmma_commit_group();
#else
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgmma_wait_group() {
#ifdef MST_CPU_DEVICE
    mst_cpu::wgmma_wait_group(N);
#else
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
#endif
}
// pins accumulator registers in place around the asynchronous wgmma: without it nvcc may move reads of the
// results above wgmma.wait_group (it sees the outputs as written by the issuing asm) (CUTLASS's
// warpgroup_fence_operand). No instruction; on the CPU device the calls already order them.
template <int N>
__device__ __forceinline__ void wgmma_fence_operand(float* d) {
#ifndef MST_CPU_DEVICE
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
#else
    (void)d;
#endif
}

// wgmma.mma_async m64nNk16 f32 += bf16 x bf16 (9.7.15.5.2), register fragments 9.7.15.5.1.1, shared memory
// operands through matrix descriptors 9.7.15.5.1.2.
#ifndef MST_CPU_DEVICE
#define MST_WGMMA_R8(i) "+f"(d[i + 0]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#endif
// d[32] (= or +=, scale_d) A (64x16, shared memory K-major) * B (64x16, shared memory K-major)^T
__device__ __forceinline__ void wgmma_m64n64k16_ss(float* d, uint64_t desc_a, uint64_t desc_b, int scale_d) {
#ifdef MST_CPU_DEVICE
    mst_cpu::wgmma_m64k16_bf16(d, 64, nullptr, desc_a, desc_b, scale_d != 0, 1, 1, false, false);
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "
        "%23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}"
        : MST_WGMMA_R8(0), MST_WGMMA_R8(8), MST_WGMMA_R8(16), MST_WGMMA_R8(24)
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
#endif
}
// d[64] (= or +=, scale_d) A (64x16, shared memory K-major) * B (128x16, shared memory K-major)^T
__device__ __forceinline__ void wgmma_m64n128k16_ss(float* d, uint64_t desc_a, uint64_t desc_b, int scale_d) {
#ifdef MST_CPU_DEVICE
    mst_cpu::wgmma_m64k16_bf16(d, 128, nullptr, desc_a, desc_b, scale_d != 0, 1, 1, false, false);
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "
        "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "
        "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "%64, %65, p, 1, 1, 0, 0;\n}"
        : MST_WGMMA_R8(0), MST_WGMMA_R8(8), MST_WGMMA_R8(16), MST_WGMMA_R8(24), MST_WGMMA_R8(32), MST_WGMMA_R8(40),
          MST_WGMMA_R8(48), MST_WGMMA_R8(56)
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
#endif
}
// d[32] += A (64x16 bf16, registers) * B (16x64, shared memory N-major: the transpose bit)
__device__ __forceinline__ void wgmma_m64n64k16_rs_transb(float* d, const uint32_t* a, uint64_t desc_b) {
#ifdef MST_CPU_DEVICE
    mst_cpu::wgmma_m64k16_bf16(d, 64, a, 0, desc_b, true, 1, 1, false, true);
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "
        "%23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}"
        : MST_WGMMA_R8(0), MST_WGMMA_R8(8), MST_WGMMA_R8(16), MST_WGMMA_R8(24)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
#endif
}
// d[64] += A (64x16 bf16, registers) * B (16x128, shared memory N-major: the transpose bit)
__device__ __forceinline__ void wgmma_m64n128k16_rs_transb(float* d, const uint32_t* a, uint64_t desc_b) {
#ifdef MST_CPU_DEVICE
    mst_cpu::wgmma_m64k16_bf16(d, 128, a, 0, desc_b, true, 1, 1, false, true);
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "
        "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "
        "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}"
        : MST_WGMMA_R8(0), MST_WGMMA_R8(8), MST_WGMMA_R8(16), MST_WGMMA_R8(24), MST_WGMMA_R8(32), MST_WGMMA_R8(40),
          MST_WGMMA_R8(48), MST_WGMMA_R8(56)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
#endif
}
#ifndef MST_CPU_DEVICE
#undef MST_WGMMA_R8
#endif

// setmaxnreg (9.7.19.5): the warpgroup's per-thread register limit becomes N (a multiple of 8 in [24, 256]);
// every thread of the warpgroup executes the same one
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
    static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg: a multiple of 8 in [24, 256]");
#ifdef MST_CPU_DEVICE
    mst_cpu::setmaxnreg(true, N);
#else
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
    static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg: a multiple of 8 in [24, 256]");
#ifdef MST_CPU_DEVICE
    mst_cpu::setmaxnreg(false, N);
#else
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(N));
#endif
}

// bar.sync id, threads (9.7.13.1): a named barrier over `threads` threads (a multiple of 32)
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
#ifdef MST_CPU_DEVICE
    mst_cpu::named_barrier(id, threads);
#else
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
#endif
}
// bar.arrive id, threads (9.7.13.1): counts this thread toward the barrier's phase without waiting for it
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
#ifdef MST_CPU_DEVICE
    mst_cpu::named_barrier_arrive(id, threads);
#else
    asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory");
#endif
}

}  // namespace mst
