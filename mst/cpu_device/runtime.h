// mst/cpu_device/runtime.h: what the parts of the CPU device (runtime.cpp: memory, streams, events, the
// kernel engine; cublaslt.cpp: the matmuls) share. Not for kernels or the trainer: they see the CUDA API.
#pragma once
#include <cstddef>
#include <cstdint>
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

}  // namespace mst_cpu
