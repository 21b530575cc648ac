// mst/cpu_device/runtime.cpp: the CUDA runtime API on the CPU device: a declared virtual card, device and
// pinned allocations (poisoned when made), copies and memsets, streams and events with a GPU's ordering
// and stricter timing, kernel launches (checked as a GPU checks them, then run by engine.cpp).
//
// Streams: each stream's operations run in order. A kernel, a memset or a host-side step runs as soon as
// it reaches the front of its stream. An asynchronous copy begins there (its destination poisoned) and
// lands as late as its stream's order allows: when a kernel, memset or host step is queued behind it on its
// stream (that must run, so the copy must have finished), or something waits for it (an event, a
// synchronize). Copies, waits and event recordings queued behind it keep it in flight. So an operation on another stream that reads the
// destination without waiting for the copy's event reads poison, and one that overwrites the source
// before the copy's event changes what lands: both break results that the tests compare.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <string>
#include <mutex>
#include <sys/mman.h>
#include <vector>

#include "mst/cpu_device/cpu_device.h"
#include "mst/cpu_device/engine.h"
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

namespace mst_cpu {
void run_launch(const char* kernel_name, dim3 grid, dim3 block, size_t dynamic_smem, const std::function<void()>& body);
}

// ----------------------------------------------------------------------------
// the virtual card (MST_CPU_CARD: h200, h100, a100): what cudaGetDeviceProperties reports, so the trainer
// plans exactly as on that card

struct CardSpec {
    const char* key;
    const char* name;
    int major, minor, sms;
    size_t memory, smem_optin;
};
static const CardSpec CARDS[] = {
    {"h200", "NVIDIA H200 (CPU device)", 9, 0, 132, 143771ull << 20, 232448},
    {"h100", "NVIDIA H100 80GB HBM3 (CPU device)", 9, 0, 132, 81559ull << 20, 232448},
    {"a100", "NVIDIA A100-SXM4-80GB (CPU device)", 8, 0, 108, 81920ull << 20, 166912},
};
static const CardSpec& card() {
    static const CardSpec* c = [] {
        const char* want = getenv("MST_CPU_CARD");
        if (!want) return &CARDS[0];
        for (const CardSpec& s : CARDS) if (!strcmp(s.key, want)) return &s;
        mst_cpu::fatal("MST_CPU_CARD=%s: must be h200, h100 or a100", want);
    }();
    return *c;
}
static const size_t CONTEXT_BYTES = 512ull << 20;  // what a CUDA context takes from the card
static const size_t POISON_LIMIT = 2ull << 30;      // larger allocations stay sparse (mmap, not poisoned)

// ----------------------------------------------------------------------------
// allocations

enum AllocationKind { DEVICE_ALLOCATION, PINNED_ALLOCATION };
struct Allocation {
    size_t bytes;
    AllocationKind kind;
    bool mapped;  // mmap'd (large, sparse) rather than malloc'd
};
static std::mutex g_allocations_mutex;
static std::map<uintptr_t, Allocation>& allocations() { static auto* m = new std::map<uintptr_t, Allocation>; return *m; }
static size_t g_device_bytes = 0;
// bytes allocated now and at most since the last reset, device and pinned (allocation_high_water())
static size_t g_bytes[2] = {0, 0}, g_high_water[2] = {0, 0};

static const Allocation* find_allocation(const void* p, size_t bytes, uintptr_t* base) {
    std::lock_guard<std::mutex> lock(g_allocations_mutex);
    auto& m = allocations();
    auto it = m.upper_bound((uintptr_t)p);
    if (it == m.begin()) return nullptr;
    --it;
    if ((uintptr_t)p + bytes > it->first + it->second.bytes) return nullptr;
    if (base) *base = it->first;
    return &it->second;
}

// ----------------------------------------------------------------------------
// regions and their guards (mst::declare_regions): the bytes after each region of an arena, up to the next,
// hold the poison pattern (or are AddressSanitizer-poisoned); a change is an overrun, reported after the
// operation that made it. A range that starts in a region must end in it.

struct Region {
    uintptr_t lo, hi;  // [lo, hi): the region; [hi, guard_end): its guard
    uintptr_t guard_end;
    std::string name;
    const char* arena;
};
static std::vector<Region>& regions() { static auto* v = new std::vector<Region>; return *v; }

static const Region* region_containing(uintptr_t a) {
    for (const Region& r : regions()) if (a >= r.lo && a < r.guard_end) return &r;
    return nullptr;
}

// why [p, p + bytes) is not inside one region of a declared arena; null if it is, or p is in none
static std::string region_violation(const void* p, size_t bytes) {
    uintptr_t a = (uintptr_t)p;
    const Region* r = region_containing(a);
    if (!r) return "";
    char text[300];
    if (a >= r->hi) snprintf(text, sizeof text, "starts %zu bytes past the end of region \"%s\" of the %s", (size_t)(a - r->hi), r->name.c_str(), r->arena);
    else if (a + bytes > r->hi) snprintf(text, sizeof text, "runs %zu bytes past the end of region \"%s\" of the %s", (size_t)(a + bytes - r->hi), r->name.c_str(), r->arena);
    else return "";
    return text;
}

static bool is_poison_byte(const unsigned char* c) { return *c == ((((uintptr_t)c) & 1) ? 0x7f : 0xff); }

#if defined(__SANITIZE_ADDRESS__)
static void check_guards(const char*) {}  // AddressSanitizer reports the access itself
#else
static void check_guards(const char* what) {
    for (const Region& r : regions())
        for (uintptr_t a = r.hi; a < r.guard_end; a++)
            if (!is_poison_byte((const unsigned char*)a))
                mst_cpu::fatal("%s wrote past the end of region \"%s\" of the %s (the guard byte %zu bytes after it changed)",
                               what, r.name.c_str(), r.arena, (size_t)(a - r.hi));
}
#endif

namespace mst_cpu {
static std::atomic<uint64_t> g_memory_generation{1};  // changes when an allocation or region goes or comes
bool is_device_memory(const void* p, size_t bytes) {
    // the last range found valid, per thread: kernels ask for every cp.async and TMA
    thread_local uintptr_t known_lo = 0, known_hi = 0;
    thread_local uint64_t known_generation = 0;
    uintptr_t a = (uintptr_t)p;
    if (known_generation == g_memory_generation.load(std::memory_order_relaxed) && a >= known_lo && a + bytes <= known_hi)
        return true;
    uintptr_t base;
    const Allocation* found = find_allocation(p, bytes, &base);
    if (!found || !region_violation(p, bytes).empty()) return false;
    const Region* r = region_containing(a);
    known_lo = r ? r->lo : base;
    known_hi = r ? r->hi : base + found->bytes;
    known_generation = g_memory_generation.load();
    return true;
}

size_t region_guard_bytes() { return 4096; }

size_t allocation_high_water(bool pinned, bool reset) {
    std::lock_guard<std::mutex> lock(g_allocations_mutex);
    int kind = pinned ? PINNED_ALLOCATION : DEVICE_ALLOCATION;
    size_t high = g_high_water[kind];
    if (reset) g_high_water[kind] = g_bytes[kind];
    return high;
}

void declare_regions(const char* arena, const char* arena_name, const size_t* offset, const size_t* bytes,
                     const char* const* names, int count) {
    uintptr_t base;
    const Allocation* a = find_allocation(arena, 1, &base);
    if (!a || base != (uintptr_t)arena) fatal("declare_regions: %p is not an allocation", (const void*)arena);
    uintptr_t end = base + a->bytes;
    auto& v = regions();
    v.erase(std::remove_if(v.begin(), v.end(), [&](const Region& r) { return r.lo >= base && r.lo < end; }), v.end());
    g_memory_generation++;
    for (int i = 0; i < count; i++) {
        Region r;
        r.lo = base + offset[i];
        r.hi = r.lo + bytes[i];
        r.guard_end = i + 1 < count ? base + offset[i + 1] : end;
        if (r.hi > r.guard_end) fatal("declare_regions: region %s overlaps the next", names[i]);
        r.name = names[i];
        r.arena = arena_name;
        poison((void*)r.hi, r.guard_end - r.hi);
#if defined(__SANITIZE_ADDRESS__)
        ASAN_POISON_MEMORY_REGION((void*)r.hi, r.guard_end - r.hi);
#endif
        v.push_back(r);
    }
}
}  // namespace mst_cpu

static bool is_pinned(const void* p, size_t bytes) {
    const Allocation* a = find_allocation(p, bytes, nullptr);
    return a && a->kind == PINNED_ALLOCATION;
}
static bool is_device(const void* p, size_t bytes) {
    const Allocation* a = find_allocation(p, bytes, nullptr);
    return a && a->kind == DEVICE_ALLOCATION;
}

static void* allocate(size_t bytes, AllocationKind kind) {
    size_t rounded = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
    void* p;
    bool mapped = rounded > POISON_LIMIT;
    if (mapped) {
        p = mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return nullptr;
    } else {
        p = aligned_alloc(256, rounded);
        if (!p) return nullptr;
        mst_cpu::poison(p, rounded);
    }
    std::lock_guard<std::mutex> lock(g_allocations_mutex);
    allocations()[(uintptr_t)p] = {rounded, kind, mapped};
    if (kind == DEVICE_ALLOCATION) g_device_bytes += rounded;
    g_bytes[kind] += rounded;
    g_high_water[kind] = std::max(g_high_water[kind], g_bytes[kind]);
    return p;
}

static cudaError_t release(void* p, AllocationKind kind) {
    if (!p) return cudaSuccess;
    Allocation a;
    {
        std::lock_guard<std::mutex> lock(g_allocations_mutex);
        auto it = allocations().find((uintptr_t)p);
        if (it == allocations().end() || it->second.kind != kind) return cudaErrorInvalidValue;
        a = it->second;
        allocations().erase(it);
        if (kind == DEVICE_ALLOCATION) g_device_bytes -= a.bytes;
        g_bytes[kind] -= a.bytes;
    }
    auto& v = regions();
    v.erase(std::remove_if(v.begin(), v.end(), [&](const Region& r) { return r.lo >= (uintptr_t)p && r.lo < (uintptr_t)p + a.bytes; }), v.end());
    mst_cpu::g_memory_generation++;
#if defined(__SANITIZE_ADDRESS__)
    ASAN_UNPOISON_MEMORY_REGION(p, a.bytes);
#endif
    if (a.mapped) munmap(p, a.bytes);
    else free(p);
    return cudaSuccess;
}

// ----------------------------------------------------------------------------
// streams and events

struct Operation {
    enum Kind { WORK, COPY, RECORD, WAIT } kind;
    const char* what = "";
    std::function<void()> work;                    // WORK: runs at the front
    // COPY: poisons dst when it begins, lands (reads src, or the snapshot taken at the call) when it ends
    void* dst = nullptr;
    const void* src = nullptr;
    size_t bytes = 0;
    std::vector<unsigned char> snapshot;
    bool begun = false, poison_destination = true;
    cudaEvent_t event = nullptr;                   // RECORD, WAIT
    uint64_t record = 0;                           // WAIT: which recording of the event it waits for
};

struct CUstream_st {
    std::deque<Operation> queue;
    bool legacy = false;
};
struct CUevent_st {
    cudaStream_t stream = nullptr;
    uint64_t recorded = 0, completed = 0;          // recordings queued, and reached
    std::chrono::steady_clock::time_point when;
};

static CUstream_st g_legacy_stream_object = [] { CUstream_st s; s.legacy = true; return s; }();
static std::vector<cudaStream_t>& streams() { static auto* v = new std::vector<cudaStream_t>; return *v; }
static std::mutex g_stream_mutex;  // the host calls the API from one thread; kernels never do
static cudaError_t g_last_error = cudaSuccess;

static cudaStream_t resolve(cudaStream_t s) { return s ? s : &g_legacy_stream_object; }

static void progress(cudaStream_t s, bool finish_copies);

// the operation at the front of s runs (or a copy begins, and lands when `land`)
static bool step_front(cudaStream_t s, bool land) {
    Operation& op = s->queue.front();
    switch (op.kind) {
        case Operation::WORK:
            op.work();
            check_guards(op.what);
            break;
        case Operation::COPY:
            if (!op.begun) {
                op.begun = true;
                if (op.poison_destination) mst_cpu::poison(op.dst, op.bytes);
            }
            if (!land) return false;
            memcpy(op.dst, op.snapshot.empty() ? op.src : op.snapshot.data(), op.bytes);
            check_guards(op.what);
            break;
        case Operation::RECORD:
            op.event->completed = std::max(op.event->completed, op.record);
            op.event->when = std::chrono::steady_clock::now();
            break;
        case Operation::WAIT:
            while (op.event->completed < op.record && !op.event->stream->queue.empty())  // until that recording is reached
                step_front(op.event->stream, true);
            if (op.event->completed < op.record)
                mst_cpu::fatal("cudaStreamWaitEvent: the event's recording can never be reached (a cycle of waits)");
            break;
    }
    s->queue.pop_front();
    return true;
}

// runs s's front operations; a copy at the front lands only if work is queued behind it (a kernel, memset or
// host step, which runs as soon as it is reached) or `finish` asks for everything
static void progress(cudaStream_t s, bool finish) {
    while (!s->queue.empty()) {
        bool land = finish;
        if (!land && s->queue.front().kind == Operation::COPY)
            for (size_t i = 1; i < s->queue.size() && !land; i++) land = s->queue[i].kind == Operation::WORK;
        if (!step_front(s, land || s->queue.front().kind != Operation::COPY)) return;
    }
}

static void finish_all() {
    for (cudaStream_t s : streams()) progress(s, true);
    progress(&g_legacy_stream_object, true);
}

static void enqueue(cudaStream_t stream, Operation op) {
    cudaStream_t s = resolve(stream);
    if (s->legacy) finish_all();  // the legacy default stream waits for every stream's work
    s->queue.push_back(std::move(op));
    progress(s, s->legacy);
}

namespace mst_cpu {
void stream_enqueue(cudaStream_t stream, const char* what, std::function<void()> work) {
    Operation op;
    op.kind = Operation::WORK;
    op.what = what;
    op.work = std::move(work);
    enqueue(stream, std::move(op));
}

void launch(const char* kernel_name, const void* kernel_id, dim3 grid, dim3 block, size_t dynamic_smem,
            cudaStream_t stream, std::function<void()> body);
}  // namespace mst_cpu

// ----------------------------------------------------------------------------
// launches: refused as a GPU refuses them (the error shows at cudaGetLastError, as on a GPU)

static std::map<const void*, int>& max_dynamic_smem() { static auto* m = new std::map<const void*, int>; return *m; }

void mst_cpu::launch(const char* kernel_name, const void* kernel_id, dim3 grid, dim3 block, size_t dynamic_smem,
                     cudaStream_t stream, std::function<void()> body) {
    size_t threads = (size_t)block.x * block.y * block.z;
    const char* problem = nullptr;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu)
        problem = "grid dimensions outside (1..2^31-1, 1..65535, 1..65535)";
    else if (threads == 0 || threads > 1024 || block.z > 64) problem = "block of 0 or more than 1024 threads";
    else if (dynamic_smem > (size_t)card().smem_optin) problem = "more dynamic shared memory than the card has";
    else if (dynamic_smem > 48 * 1024 && (!max_dynamic_smem().count(kernel_id) || (size_t)max_dynamic_smem()[kernel_id] < dynamic_smem))
        problem = "more than 48 KiB of dynamic shared memory without cudaFuncSetAttribute(MaxDynamicSharedMemorySize)";
    if (problem) {
        fprintf(stderr, "[CPU device] launch of %s (grid %u,%u,%u, block %u,%u,%u, %zu bytes shared) refused: %s\n",
                kernel_name, grid.x, grid.y, grid.z, block.x, block.y, block.z, dynamic_smem, problem);
        g_last_error = cudaErrorInvalidConfiguration;
        return;
    }
    std::string name = kernel_name;
    stream_enqueue(stream, kernel_name, [name, grid, block, dynamic_smem, body]() {
        mst_cpu::run_launch(name.c_str(), grid, block, dynamic_smem, body);
    });
}

// ----------------------------------------------------------------------------
// the API

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) { *count = 1; return cudaSuccess; }
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaGetDevice(int* device) { *device = 0; return cudaSuccess; }
cudaError_t cudaDriverGetVersion(int* v) { *v = CUDART_VERSION; return cudaSuccess; }
cudaError_t cudaRuntimeGetVersion(int* v) { *v = CUDART_VERSION; return cudaSuccess; }

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
    if (device != 0) return cudaErrorInvalidDevice;
    const CardSpec& c = card();
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "%s", c.name);
    prop->totalGlobalMem = c.memory;
    prop->sharedMemPerBlock = 48 * 1024;
    prop->sharedMemPerBlockOptin = c.smem_optin;
    prop->sharedMemPerMultiprocessor = c.smem_optin + 1024;
    prop->regsPerBlock = 65536;
#undef warpSize  // the member, not cpu_device.h's built-in
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024;
    prop->maxThreadsDim[2] = 64;
    prop->maxGridSize[0] = 0x7fffffff;
    prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
    prop->major = c.major;
    prop->minor = c.minor;
    prop->multiProcessorCount = c.sms;
    prop->maxThreadsPerMultiProcessor = 2048;
    prop->l2CacheSize = c.major == 9 ? 50 << 20 : 40 << 20;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
    if (device != 0) return cudaErrorInvalidDevice;
    const CardSpec& c = card();
    switch (attr) {
        case cudaDevAttrComputeCapabilityMajor: *value = c.major; return cudaSuccess;
        case cudaDevAttrComputeCapabilityMinor: *value = c.minor; return cudaSuccess;
        case cudaDevAttrMultiProcessorCount: *value = c.sms; return cudaSuccess;
        case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = (int)c.smem_optin; return cudaSuccess;
        default: mst_cpu::fatal("cudaDeviceGetAttribute(%d): not emulated", (int)attr);
    }
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
    *total = card().memory;
    *free_bytes = card().memory - CONTEXT_BYTES - std::min(g_device_bytes, card().memory - CONTEXT_BYTES);
    return cudaSuccess;
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
    size_t free_bytes, total;
    cudaMemGetInfo(&free_bytes, &total);
    if (bytes > free_bytes) { *p = nullptr; return g_last_error = cudaErrorMemoryAllocation; }
    *p = allocate(bytes, DEVICE_ALLOCATION);
    return *p ? cudaSuccess : (g_last_error = cudaErrorMemoryAllocation);
}
cudaError_t cudaFree(void* p) {
    finish_all();  // as on a GPU, cudaFree synchronizes
    return release(p, DEVICE_ALLOCATION);
}
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned int) {
    *p = allocate(bytes, PINNED_ALLOCATION);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaMallocHost(void** p, size_t bytes) { return cudaHostAlloc(p, bytes, 0); }
cudaError_t cudaFreeHost(void* p) {
    finish_all();
    return release(p, PINNED_ALLOCATION);
}

// a copy's kind checked against where its pointers lie (a wrong kind is a bug a GPU may not report)
static cudaError_t check_copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, const char* who) {
    bool dst_device = is_device(dst, bytes), src_device = is_device(src, bytes);
    bool ok = kind == cudaMemcpyDefault || (kind == cudaMemcpyHostToDevice && dst_device && !src_device) ||
              (kind == cudaMemcpyDeviceToHost && src_device && !dst_device) ||
              (kind == cudaMemcpyDeviceToDevice && dst_device && src_device) ||
              (kind == cudaMemcpyHostToHost && !dst_device && !src_device);
    for (const void* p : {(const void*)dst, src}) {
        std::string problem = region_violation(p, bytes);
        if (!problem.empty()) mst_cpu::fatal("%s(%p, %p, %zu bytes): the range at %p %s", who, dst, src, bytes, p, problem.c_str());
    }
    if (!ok)
        mst_cpu::fatal("%s(%p, %p, %zu bytes, kind %d): a pointer is not where the kind says (device: destination %s, "
                       "source %s; or a range runs past its allocation)", who, dst, src, bytes, (int)kind,
                       dst_device ? "yes" : "no", src_device ? "yes" : "no");
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    if (bytes == 0) return cudaSuccess;
    check_copy(dst, src, bytes, kind, "cudaMemcpy");
    finish_all();  // the legacy stream: after everything queued
    memcpy(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
    if (bytes == 0) return cudaSuccess;
    check_copy(dst, src, bytes, kind, "cudaMemcpyAsync");
    bool dst_device = is_device(dst, bytes), src_device = is_device(src, bytes);
    Operation op;
    op.kind = Operation::COPY;
    op.what = "cudaMemcpyAsync";
    op.dst = dst;
    op.src = src;
    op.bytes = bytes;
    // pageable host source: staged at the call, as the driver does; pinned or device: read when it lands
    if (!src_device && !is_pinned(src, bytes)) op.snapshot.assign((const unsigned char*)src, (const unsigned char*)src + bytes);
    bool pageable_destination = !dst_device && !is_pinned(dst, bytes);
    op.poison_destination = !pageable_destination;
    cudaStream_t s = resolve(stream);
    enqueue(stream, std::move(op));
    // into pageable host memory the call returns only once the copy is done, as CUDA's does
    if (pageable_destination) progress(s, true);
    return cudaSuccess;
}

// device to device only (the trainer's Ulysses all-to-all packing): `height` rows of `width` bytes, row r from
// src + r spitch to dst + r dpitch, every row's range checked as cudaMemcpyAsync checks one
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t stream) {
    if (width == 0 || height == 0) return cudaSuccess;
    if (kind != cudaMemcpyDeviceToDevice) mst_cpu::fatal("cudaMemcpy2DAsync: kind %d (the CPU device copies device to device only)", (int)kind);
    if (width > dpitch || width > spitch) return cudaErrorInvalidPitchValue;
    for (size_t r = 0; r < height; r++) check_copy((char*)dst + r * dpitch, (const char*)src + r * spitch, width, kind, "cudaMemcpy2DAsync");
    mst_cpu::stream_enqueue(stream, "cudaMemcpy2DAsync", [=] {
        for (size_t r = 0; r < height; r++) memmove((char*)dst + r * dpitch, (const char*)src + r * spitch, width);
    });
    return cudaSuccess;
}

cudaError_t cudaMemset(void* p, int value, size_t bytes) {
    if (bytes == 0) return cudaSuccess;
    if (!mst_cpu::is_device_memory(p, bytes)) mst_cpu::fatal("cudaMemset(%p, %zu bytes): not inside one device allocation and region", p, bytes);
    finish_all();
    memset(p, value, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream) {
    if (bytes == 0) return cudaSuccess;
    if (!mst_cpu::is_device_memory(p, bytes)) mst_cpu::fatal("cudaMemsetAsync(%p, %zu bytes): not inside one device allocation and region", p, bytes);
    mst_cpu::stream_enqueue(stream, "cudaMemsetAsync", [p, value, bytes] { memset(p, value, bytes); });
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* s) {
    *s = new CUstream_st;
    streams().push_back(*s);
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int) { return cudaStreamCreate(s); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (!s) return cudaErrorInvalidResourceHandle;
    progress(s, true);  // its work still completes, as CUDA's does
    auto& v = streams();
    auto it = std::find(v.begin(), v.end(), s);
    if (it == v.end()) return cudaErrorInvalidResourceHandle;
    v.erase(it);
    delete s;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    if (!s) finish_all();
    else progress(s, true);
    return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t s) { return resolve(s)->queue.empty() ? cudaSuccess : cudaErrorNotReady; }
cudaError_t cudaDeviceSynchronize() { finish_all(); return cudaSuccess; }

cudaError_t cudaEventCreate(cudaEvent_t* e) { *e = new CUevent_st; return cudaSuccess; }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) { delete e; return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t stream) {
    e->stream = resolve(stream);
    Operation op;
    op.kind = Operation::RECORD;
    op.event = e;
    op.record = ++e->recorded;
    enqueue(stream, std::move(op));
    return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t e, unsigned int) {
    if (e->recorded == 0) return cudaSuccess;  // never recorded: nothing to wait for, as in CUDA
    Operation op;
    op.kind = Operation::WAIT;
    op.event = e;
    op.record = e->recorded;
    enqueue(stream, std::move(op));
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    while (e->completed < e->recorded && !e->stream->queue.empty()) step_front(e->stream, true);
    return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e) { return e->completed >= e->recorded ? cudaSuccess : cudaErrorNotReady; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
    if (start->completed == 0 || end->completed == 0) return cudaErrorInvalidResourceHandle;
    *ms = std::chrono::duration<float, std::milli>(end->when - start->when).count();
    return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || (size_t)value > card().smem_optin) return g_last_error = cudaErrorInvalidValue;
        max_dynamic_smem()[func] = value;
    }
    return cudaSuccess;
}

cudaError_t cudaGetLastError() {
    cudaError_t e = g_last_error;
    g_last_error = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError() { return g_last_error; }

const char* cudaGetErrorName(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "cudaSuccess";
        case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
        case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
        case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
        case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
        case cudaErrorNotReady: return "cudaErrorNotReady";
        case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
        default: return "cudaError";
    }
}
const char* cudaGetErrorString(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory (the CPU device's virtual card)";
        case cudaErrorInvalidConfiguration: return "invalid configuration argument";
        case cudaErrorInvalidDevice: return "invalid device ordinal";
        case cudaErrorNotReady: return "device not ready";
        case cudaErrorInvalidResourceHandle: return "invalid resource handle";
        default: return "unknown error";
    }
}

}  // extern "C"
