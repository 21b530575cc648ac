// mst/cpu_device/engine.h: the CPU device's kernel engine, shared by runtime.cpp (the engine, the CUDA
// runtime API, the race tracker) and the PTX emulation files. Kernels never include it.
//
// A grid runs block by block on worker OS threads; a block's CUDA threads are fibers on its worker,
// switched only where a GPU thread synchronizes: a barrier, a warp collective (shuffle, ldmatrix, mma, ...),
// an mbarrier wait. Which runnable fiber runs next is the schedule's choice. Shared memory (dynamic: the
// worker's window; static: its thread_local block) is shadowed per 2 bytes for the race tracker: the
// last write and the reads since, each with the thread and its warp's clock, and happens-before from
// barriers and warp collectives (vector clocks over the block's warps).
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>
#include <cuda_runtime.h>

#include "mst/cpu_device/runtime.h"

namespace mst_cpu {

static const int MAX_BLOCK_THREADS = 1024;
static const int MAX_WARPS = MAX_BLOCK_THREADS / 32;
static const int MAX_NAMED_BARRIERS = 16;
static const uint16_t NO_THREAD = 0xffff, SHARED_READERS = 0xfffe;

enum ThreadStatus : uint8_t { NOT_STARTED, RUNNABLE, RUNNING, BLOCKED, DONE };

// one cp.async in flight: its 16 bytes were read at issue and land at the wait that retires its group
struct AsyncCopy {
    unsigned char* dst;
    unsigned char data[16];
    int group;
};

// A warp collective's operands, left by each lane for the lane that completes it: pointers into the
// lanes' fiber stacks (valid while they are blocked) or values.
struct CollectiveOperands {
    const void* in0 = nullptr;
    const void* in1 = nullptr;
    void* out = nullptr;
    uint64_t value = 0;
    int operand = 0;
};

struct CudaThread {
    uint3 index;
    int linear = 0, warp = 0, lane = 0;
    ThreadStatus status = NOT_STARTED;
    const char* waiting_at = nullptr;  // the construct a blocked thread waits at (for deadlock lines)
    int barrier = -1;                  // the named barrier it waits at
    void* sp = nullptr;                // saved stack pointer while switched out
    char* stack = nullptr;
    CollectiveOperands collective;
    std::vector<AsyncCopy> async_copies;
    int open_group = 0;                // cp.async issued now joins this group; commit starts the next
};

struct Warp {
    int lanes = 32;                    // 32, fewer only in a last partial warp
    uint32_t vc[MAX_WARPS];            // vc[own] = this warp's clock (from 1); vc[u] = what it has seen of u
    int arrived = 0;                   // lanes arrived at the current collective
    int kind = 0;
    const char* kind_name = nullptr;
};

// a warpgroup collective (wgmma, setmaxnreg: 4 whole warps, 128 threads) in progress
struct WarpgroupCollective {
    int arrived = 0;
    int kind = 0;
    const char* kind_name = nullptr;
};

struct NamedBarrier {
    int expected = 0, arrived = 0;
    uint32_t warps = 0;                // warps of the threads arrived so far (bit per warp)
    uint32_t waiting = 0;              // those of them that wait (bar.sync); the others only arrive (bar.arrive)
    uint32_t lanes[MAX_WARPS];         // the threads arrived in this phase (bit per lane)
    uint32_t join[MAX_WARPS];          // elementwise max of their clocks at arrival
};

// The happens-before record of 2 bytes of shared memory within the current block (serial).
struct Granule {
    uint32_t serial = 0;
    uint16_t writer = NO_THREAD, reader = NO_THREAD;
    uint32_t write_clock = 0, read_clock = 0;  // read_clock: the readers' set index when reader == SHARED_READERS
    uint8_t written = 0, pending = 0;          // written in this block; an asynchronous write not landed yet
};
// the reads of 2 bytes by several threads in one interval: per warp, its latest clock and lane
struct ReadSet {
    uint32_t clock[MAX_WARPS];
    uint8_t lane[MAX_WARPS];
    uint8_t many_lanes[MAX_WARPS];
};

struct GridLaunch {
    const char* kernel = nullptr;
    dim3 grid, block;
    size_t dynamic_smem = 0;
    const std::function<void()>* body = nullptr;
    uint64_t launch_index = 0;
    std::vector<uint32_t> order;       // the blocks in the schedule's order
    std::atomic<size_t> next{0};
};

struct Block {
    const GridLaunch* launch = nullptr;
    uint3 index;
    int threads = 0, warps = 0, live = 0;
    std::vector<CudaThread> thread;
    Warp warp[MAX_WARPS];
    NamedBarrier barrier[MAX_NAMED_BARRIERS];
    WarpgroupCollective warpgroup[MAX_WARPS / 4];
    uint64_t runnable[MAX_BLOCK_THREADS / 64];
    int last_picked = -1;
    uint64_t rng = 0;
    uint32_t serial = 0;
};

struct Worker {
    int id = 0;
    Block block;
    CudaThread* current = nullptr;
    void* scheduler_sp = nullptr;
    std::vector<char*> free_stacks;
    // shared memory: the dynamic window (launch's bytes at the start) and this OS thread's TLS block
    unsigned char* dynamic_smem = nullptr;
    size_t dynamic_capacity = 0;
    uintptr_t tls_lo = 0, tls_size = 0;
    std::vector<Granule> dynamic_shadow, static_shadow;
    std::vector<ReadSet> read_sets;
    std::vector<uint32_t> free_read_sets;  // those of granules written since (reused: a block may run long)
    bool tracking = false;
    void* os_stack = nullptr;          // the worker's own stack (the scheduler's), for AddressSanitizer
    size_t os_stack_size = 0;
};

Worker* current_worker();              // null outside a kernel's fibers
CudaThread& current_thread();          // fatal outside a kernel
Block& current_block();

// the calling fiber blocks (status BLOCKED, waiting at `what`) until something makes it runnable
void block_current_thread(const char* what);
void make_runnable(Block& b, int thread);
// the running fiber lets the schedule run another runnable one first (it stays runnable)
void yield_current_thread();
// a warp collective: each lane sets current_thread().collective, then calls this; the last lane to arrive
// calls complete(block, warp) with all lanes' operands, and every lane returns after it
void warp_collective(int kind, const char* name, void (*complete)(Block&, int warp));
// a warpgroup collective (PTX ISA 9.7.15.1: 4 contiguous warps, threads 128 g .. 128 g + 127): all 128 threads
// of the caller's warpgroup arrive with the same kind; the last calls complete(block, g), and all return after
// it. It orders nothing between the four warps (each warp's own clock ticks, as at a warp collective).
void warpgroup_collective(int kind, const char* name, void (*complete)(Block&, int warpgroup));
// Asynchronous units outside the fibers (hopper.cpp: the TMA unit). progress: called when no fiber of the
// block can run, before a deadlock is reported; it completes some pending asynchronous work and returns
// whether it did (fibers it woke run next). block_end: called when every thread of the block has exited.
void register_async_unit(bool (*progress)(Block&), void (*block_end)(Block&));
// A shared-memory access by thread t (not necessarily the running fiber: collectives read for their
// lanes): bounds, races, reads of bytes never written or not landed. async: a cp.async/TMA write, pending
// until land_async.
void shared_access(CudaThread& t, const void* p, size_t bytes, bool write, bool async = false);
void land_async(const void* p, size_t bytes);
bool is_shared(const void* p, size_t bytes);
[[noreturn]] void kernel_fatal(const CudaThread* t, const char* format, ...) __attribute__((format(printf, 2, 3)));

// 0x7fff in every 2 bytes: NaN as bf16, fp16, fp32 and fp64, and 2147450879 as int32 (an index far out
// of range, never a valid token or an ignored target)
void poison(void* p, size_t bytes);

// hopper.cpp's address math: element (r, k) of a wgmma operand through a descriptor's start, LBO, SBO and
// swizzle (bytes: 128, 64, 32, 0 none), K- or MN-major; a TMA box's 16-byte chunk at `address` once swizzled
uint32_t wgmma_operand_address(uint32_t start, uint32_t lbo, uint32_t sbo, int swizzle_bytes, bool mn_major, int r, int k);
uint32_t tma_swizzled_address(uint32_t address, int swizzle_bytes);

}  // namespace mst_cpu
