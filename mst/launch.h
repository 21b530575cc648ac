// mst/launch.h: the one way mst launches a kernel, in both builds:
//   mst::launch<kernel>(grid, block, dynamic_smem_bytes, stream, args...)
// nvcc: kernel<<<grid, block, dynamic_smem_bytes, stream>>>(args...). The CPU device: the grid is queued
// on the stream and run by the CPU device's engine (mst/cpu_device/), with the kernel's name for its error
// lines. The kernel is a template argument, so a kernel template's commas need no macro tricks.
#pragma once
#include <cuda_runtime.h>

namespace mst {

template <auto Kernel, typename... Args>
static inline void launch(dim3 grid, dim3 block, size_t dynamic_smem, cudaStream_t stream, Args... args) {
#ifdef MST_CPU_DEVICE
    mst_cpu::launch(mst_cpu::kernel_name<Kernel>(), (const void*)Kernel, grid, block, dynamic_smem, stream,
                    [=]() { Kernel(args...); });
#else
    Kernel<<<grid, block, dynamic_smem, stream>>>(args...);
#endif
}

}  // namespace mst
