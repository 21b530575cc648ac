// mst/cpu_device/cpu_device.h: what a kernel sees on the CPU device. The CPU build (`make *_cpu`) passes
// `-include mst/cpu_device/cpu_device.h` to g++, so this comes before any other header: the CUDA headers
// then give the types and the runtime's declarations (no libcudart is linked: mst/cpu_device/runtime.cpp
// defines those functions), and this file gives the built-ins a kernel uses (threadIdx, __syncthreads,
// warp shuffles, atomics, intrinsics), each executed by the CPU device's engine with a GPU's semantics.
//
// The execution model (runtime.cpp says more): each CUDA thread of a block is a fiber; a block's fibers
// run on one OS thread, switching only where a GPU thread synchronizes (a barrier, a warp collective,
// an mbarrier wait), in an order chosen by the schedule (MST_CPU_SCHEDULE, MST_CPU_SEED); blocks spread
// over the machine's cores. Shared memory: `__shared__` variables become thread_local (one block at a
// time runs on an OS thread), dynamic shared memory is mst::dynamic_shared_memory(). Kernel code is
// compiled with GCC's ThreadSanitizer instrumentation whose callbacks runtime.cpp defines: every load
// and store a kernel makes to shared memory is seen by the race tracker.
#pragma once
#define MST_CPU_DEVICE 1
// the CUDA headers define __shared__ (as nothing, for a host compiler) only where it is not defined:
// block-scope thread_local is static storage per OS thread, which is per block here
#define __shared__ thread_local

#include <cstdint>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
// these declare threadIdx & co. for host code: included before the macros below replace those names
#include <device_launch_parameters.h>
#include <curand_kernel.h>

namespace mst_cpu {

// ---- the executing thread (defined in runtime.cpp; not inline: see the note on TLS above) ----
uint3 thread_index();
uint3 block_index();
dim3 block_dimensions();
dim3 grid_dimensions();

// ---- synchronization and warp collectives ----
void syncthreads();                       // bar.sync 0 over the whole block
void syncwarp(unsigned mask);             // full mask only
void named_barrier(int id, int threads);  // bar.sync id, threads (a multiple of 32)
void named_barrier_arrive(int id, int threads);  // bar.arrive id, threads: counts toward the phase, does not wait
// a full-mask warp shuffle of 64 bits: mode 0 xor, 1 down, 2 up, 3 idx (width 32)
uint64_t shuffle(unsigned mask, uint64_t value, int operand, int mode);
unsigned ballot(unsigned mask, bool predicate);
[[noreturn]] void trap(const char* what);

// ---- atomics on global or shared memory (blocks run concurrently on different OS threads) ----
float atomic_add(float* address, float value);
double atomic_add(double* address, double value);
int atomic_add(int* address, int value);
unsigned atomic_add(unsigned* address, unsigned value);
unsigned long long atomic_add(unsigned long long* address, unsigned long long value);
int atomic_cas(int* address, int compare, int value);
unsigned atomic_cas(unsigned* address, unsigned compare, unsigned value);
int atomic_max(int* address, int value);

// ---- shared memory ----
void* dynamic_shared_memory();                    // the block's dynamic shared memory (launch's bytes)
uint32_t shared_address(const void* generic);     // __cvta_generic_to_shared: an offset in the CTA window
void* generic_address(uint32_t shared);           // and back

// ---- launching (mst/launch.h's launch() calls this): the grid runs in stream order ----
void launch(const char* kernel_name, const void* kernel_id, dim3 grid, dim3 block, size_t dynamic_smem,
            cudaStream_t stream, std::function<void()> body);

// ---- sampled-block mode (or MST_CPU_SAMPLE_BLOCKS=N): each launch runs only N of its blocks, the first, the
// last and a seeded few (sampled_blocks(grid) says which, linear indices), for shapes too large to run
// whole on a CPU; 0 runs every block ----
void set_block_sampling(int blocks);
std::vector<uint32_t> sampled_blocks(dim3 grid);

// ---- the program's memory regions (mst/launch.h): guards between them, checked after every operation ----
size_t region_guard_bytes();
// the most bytes of device (or pinned host) memory allocated at once since the last reset (each allocation
// rounded to 256 bytes, as made); reset: the count starts again from what is allocated now
size_t allocation_high_water(bool pinned, bool reset);
void declare_regions(const char* arena, const char* arena_name, const size_t* offset, const size_t* bytes,
                     const char* const* names, int count);

// ---- schedules: the order of fibers between synchronization points and of blocks ----
enum Schedule { SCHEDULE_RANDOM = 0, SCHEDULE_ROUND_ROBIN, SCHEDULE_LOWEST_FIRST, SCHEDULE_HIGHEST_FIRST_REVERSED,
                SCHEDULE_COUNT };
void set_schedule(Schedule schedule, uint64_t seed);
Schedule current_schedule();
const char* schedule_name(Schedule schedule);

// the name of Kernel for error lines ("attention_forward_kernel<128, true>"), from the compiler's name of
// kernel_name<Kernel>
std::string kernel_name_from(const char* pretty_function);
template <auto Kernel>
const char* kernel_name() {
    static const std::string name = kernel_name_from(__PRETTY_FUNCTION__);
    return name.c_str();
}

}  // namespace mst_cpu

// ---- CUDA built-ins ----
#undef threadIdx
#undef blockIdx
#undef blockDim
#undef gridDim
#define threadIdx (::mst_cpu::thread_index())
#define blockIdx (::mst_cpu::block_index())
#define blockDim (::mst_cpu::block_dimensions())
#define gridDim (::mst_cpu::grid_dimensions())
#define warpSize 32  // device_launch_parameters.h declares it for device code only
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

// CUDA's min and max for device code (mixed integer widths included)
template <typename A, typename B>
inline typename std::common_type<A, B>::type min(A a, B b) { return a < b ? a : b; }
template <typename A, typename B>
inline typename std::common_type<A, B>::type max(A a, B b) { return a < b ? b : a; }

inline void __syncthreads() { mst_cpu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { mst_cpu::syncwarp(mask); }
inline void __trap() { mst_cpu::trap("__trap()"); }
inline unsigned __ballot_sync(unsigned mask, int predicate) { return mst_cpu::ballot(mask, predicate != 0); }

namespace mst_cpu {
template <typename T>
inline T shuffle_as(unsigned mask, T value, int operand, int mode) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "a warp shuffle moves at most 64 bits");
    uint64_t bits = 0;
    memcpy(&bits, &value, sizeof(T));
    bits = shuffle(mask, bits, operand, mode);
    T out;
    memcpy(&out, &bits, sizeof(T));
    return out;
}
}  // namespace mst_cpu
template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    if (width != 32) mst_cpu::trap("__shfl_xor_sync with width != 32");
    return mst_cpu::shuffle_as(mask, v, lane_mask, 0);
}
template <typename T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    if (width != 32) mst_cpu::trap("__shfl_down_sync with width != 32");
    return mst_cpu::shuffle_as(mask, v, (int)delta, 1);
}
template <typename T> inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    if (width != 32) mst_cpu::trap("__shfl_up_sync with width != 32");
    return mst_cpu::shuffle_as(mask, v, (int)delta, 2);
}
template <typename T> inline T __shfl_sync(unsigned mask, T v, int lane, int width = 32) {
    if (width != 32) mst_cpu::trap("__shfl_sync with width != 32");
    return mst_cpu::shuffle_as(mask, v, lane, 3);
}

template <typename T> inline T __ldg(const T* p) { return *p; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
inline unsigned __float_as_uint(float x) { unsigned u; memcpy(&u, &x, 4); return u; }
inline float __uint_as_float(unsigned u) { float x; memcpy(&x, &u, 4); return x; }
inline int __float_as_int(float x) { int u; memcpy(&u, &x, 4); return u; }
inline float __int_as_float(int u) { float x; memcpy(&x, &u, 4); return x; }
inline size_t __cvta_generic_to_shared(const void* p) { return mst_cpu::shared_address(p); }

// cuda_runtime.h's template overload, which it gives nvcc only
template <typename T>
inline cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attribute, int value) {
    return ::cudaFuncSetAttribute((const void*)kernel, attribute, value);
}

inline float atomicAdd(float* a, float v) { return mst_cpu::atomic_add(a, v); }
inline double atomicAdd(double* a, double v) { return mst_cpu::atomic_add(a, v); }
inline int atomicAdd(int* a, int v) { return mst_cpu::atomic_add(a, v); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return mst_cpu::atomic_add(a, v); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) { return mst_cpu::atomic_add(a, v); }
inline int atomicCAS(int* a, int c, int v) { return mst_cpu::atomic_cas(a, c, v); }
inline unsigned atomicCAS(unsigned* a, unsigned c, unsigned v) { return mst_cpu::atomic_cas(a, c, v); }
inline int atomicMax(int* a, int v) { return mst_cpu::atomic_max(a, v); }
