// mst/ptx.h: the PTX instructions mst's kernels use, one named function each (ThunderKittens' way): inline
// asm when nvcc compiles for a GPU; on the CPU device (mst/cpu_device/), the same function executed by the
// PTX ISA's semantics, stricter than a GPU (asynchronous results land only at their wait; shared memory
// accesses go through the race tracker). Kernels call these and hold no asm and no #ifdef.
//
// Section numbers are the PTX ISA's (version 8.x): 9.7.14.5.14 mma.m16n8k16, 9.7.14.5.15 ldmatrix,
// 9.7.9.25 cp.async.
#pragma once
#include <cstdint>
#ifndef MST_CPU_DEVICE
#include <cuda_runtime.h>
#endif
#include <cuda_bf16.h>

#ifdef MST_CPU_DEVICE
namespace mst_cpu {
void mma_m16n8k16_bf16(float* c, const uint32_t* a, const uint32_t* b);
void ldmatrix_x4(uint32_t* r, const void* smem, bool transpose);
void cp_async_16(void* smem, const void* global, int src_bytes);
void cp_async_commit();
void cp_async_wait(int pending_groups);
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

}  // namespace mst
