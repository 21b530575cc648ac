// mst/cpu_device/runtime.h: what the parts of the CPU device (runtime.cpp: memory, streams, events, the
// kernel engine; cublaslt.cpp: the matmuls) share. Not for kernels or the trainer: they see the CUDA API.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <cuda_runtime.h>

namespace mst_cpu {

// One line on stderr, "[CPU device] ...", then exit status 1: how every misuse the CPU device detects ends.
[[noreturn]] void fatal(const char* format, ...) __attribute__((format(printf, 1, 2)));

// Runs work in stream order on `stream` (0 = the legacy default stream): at once when nothing on that
// stream is pending, else after what is. `what` names it in error lines ("cublasLtMatmul").
void stream_enqueue(cudaStream_t stream, const char* what, std::function<void()> work);

// Whether [p, p + bytes) lies inside one live device allocation (cudaMalloc) or pinned host allocation.
bool is_device_memory(const void* p, size_t bytes);

// body(begin, end) over [0, count) in chunks of `grain`, on the kernel engine's worker threads (so host-side
// work such as the matmuls shares the cores with kernels, with no second thread pool spinning beside it)
void parallel_for(int64_t count, int64_t grain, const std::function<void(int64_t begin, int64_t end)>& body);
int worker_count();  // the workers parallel_for uses (MST_CPU_THREADS, default the machine's cores)

// bf16 <-> fp32 on the host side of the CPU device (the matmuls, NCCL's sums)
inline float bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
// round to nearest even; NaN -> 0x7fff (as cuda_bf16.h's __float2bfloat16)
inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

}  // namespace mst_cpu
