// mst/launch.h: the one way mst launches a kernel, in both builds, and the two things the CPU device asks of
// the program that a GPU does not (region guards). Launching:
//   mst::launch<kernel>(grid, block, dynamic_smem_bytes, stream, args...)
// nvcc: kernel<<<grid, block, dynamic_smem_bytes, stream>>>(args...). The CPU device: the grid is queued
// on the stream and run by the CPU device's engine (mst/cpu_device/), with the kernel's name for its error
// lines. The kernel is a template argument, so a kernel template's commas need no macro tricks.
#pragma once
#include <cstdint>
#include <vector>
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

// Whether this build runs on the CPU device (tests choose smaller shapes there: a CPU executes a kernel some
// thousands of times slower than a GPU).
static constexpr bool on_cpu_device() {
#ifdef MST_CPU_DEVICE
    return true;
#else
    return false;
#endif
}

// The CPU device's schedules (the order of fibers and blocks, mst/cpu_device/cpu_device.h): 0 random (seeded),
// 1 round-robin, 2 lowest-first, 3 highest-first-reversed; returns whether the build has them (a GPU: no).
static inline bool set_schedule(int schedule, uint64_t seed) {
#ifdef MST_CPU_DEVICE
    mst_cpu::set_schedule((mst_cpu::Schedule)schedule, seed);
    return true;
#else
    (void)schedule; (void)seed;
    return false;
#endif
}

// The CPU device's sampled-block mode: each launch runs `blocks` of its blocks (the first, the last and a
// seeded few; sampled_blocks(grid) lists them), for shapes too large for a CPU. A GPU runs every block.
static inline void set_block_sampling(int blocks) {
#ifdef MST_CPU_DEVICE
    mst_cpu::set_block_sampling(blocks);
#else
    (void)blocks;
#endif
}
static inline std::vector<uint32_t> sampled_blocks(dim3 grid) {
#ifdef MST_CPU_DEVICE
    return mst_cpu::sampled_blocks(grid);
#else
    std::vector<uint32_t> all((size_t)grid.x * grid.y * grid.z);
    for (size_t i = 0; i < all.size(); i++) all[i] = (uint32_t)i;
    return all;
#endif
}

// Bytes the memory plan leaves unused after each region (TrainingOptions::region_guard_bytes): on the CPU
// device, guards it checks after every operation, so an overrun of one region into the next is reported
// (one arena hides it on a GPU); 0 on a GPU.
static inline size_t region_guard_bytes() {
#ifdef MST_CPU_DEVICE
    return mst_cpu::region_guard_bytes();
#else
    return 0;
#endif
}
// The CPU device's high-water mark of device (pinned: pinned host) bytes allocated at once since the last reset
// (reset: start again from what is allocated now), so a test can check it against the memory plan; a GPU has
// no such count (-1).
static inline long long allocation_high_water(bool pinned, bool reset) {
#ifdef MST_CPU_DEVICE
    return (long long)mst_cpu::allocation_high_water(pinned, reset);
#else
    (void)pinned; (void)reset;
    return -1;
#endif
}
// Names an arena's regions for the CPU device: each is then bounds-checked on its own (copies, cp.async,
// matmul operands) and the bytes between them are guards. Nothing on a GPU.
static inline void declare_regions(const char* arena, const char* arena_name, const size_t* offset, const size_t* bytes,
                                   const char* const* names, int count) {
#ifdef MST_CPU_DEVICE
    mst_cpu::declare_regions(arena, arena_name, offset, bytes, names, count);
#else
    (void)arena; (void)arena_name; (void)offset; (void)bytes; (void)names; (void)count;
#endif
}

}  // namespace mst
