// comm_watchdog.h: the timeout of collectives (--comm-timeout). A rank that waits in a collective longer than
// the timeout stops the whole job with one line, instead of every rank hanging because one stopped, was
// stopped, or is stuck elsewhere:
//   error: rank R: comm: MPI_Alltoall: no progress for 600 s (--comm-timeout); a rank stopped or is stuck: stopping every rank
// A watchdog thread looks four times a second at two kinds of waits:
//   host waits    a collective that blocks the calling thread (the MPI backend of comm.h, and the CPU device's
//                 NCCL, which runs over MPI): CommWait marks it, from the call to its return
//   device waits  an NCCL collective on a GPU (the host does not wait in it): two events on its stream, the
//                 first reached when the collective may start (what it waited for is done), the second when it
//                 has finished; the time counts from when the watchdog first sees the first one reached
// Either kind past the timeout: the line, then MPI_Abort (mpirun or srun ends every rank). Off (0) until
// comm_watchdog_start; the tests of comm.h never start it.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#ifdef MST_WITH_MPI
#define OMPI_SKIP_MPICXX 1
#include <mpi.h>
#endif
#if defined(MST_WITH_NCCL) && !defined(MST_CPU_DEVICE)
#define MST_WATCH_DEVICE_COLLECTIVES 1  // a GPU's NCCL (the CPU device's NCCL waits on the host: CommWait)
#include <cuda_runtime.h>
#endif

struct CommWatchdog {
    double timeout_s = 0;                      // 0: no watchdog
    int rank = 0;
    std::atomic<int64_t> host_wait_since{0};   // milliseconds on the steady clock; 0: no host wait
    std::atomic<const char*> host_wait_call{nullptr};
#ifdef MST_WATCH_DEVICE_COLLECTIVES
    struct DeviceWait {
        cudaEvent_t start, done;
        const char* call;
        int64_t started = 0;                   // when the watchdog first saw `start` reached (ms); 0: not yet
    };
    std::mutex mutex;                          // guards the two lists below (the trainer's thread and the watchdog's)
    std::deque<DeviceWait> in_flight;          // in stream order
    std::vector<DeviceWait> spare;             // event pairs made at start, reused
#endif
};

// one per process: inline, not static, so the trainer and the CPU device's NCCL (another object file) share it
inline CommWatchdog& comm_watchdog() {
    static CommWatchdog w;
    return w;
}

static inline int64_t comm_watchdog_now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

[[noreturn]] static inline void comm_watchdog_expire(const char* call) {
    CommWatchdog& w = comm_watchdog();
    fprintf(stderr, "error: rank %d: comm: %s: no progress for %g s (--comm-timeout); a rank stopped or is stuck: stopping every rank\n",
            w.rank, call, w.timeout_s);
    fflush(stderr);
#ifdef MST_WITH_MPI
    MPI_Abort(MPI_COMM_WORLD, 1);
#endif
    _Exit(1);
}

// has this wait, begun at `since` (ms), run past the timeout?
static inline bool comm_watchdog_expired(int64_t since, int64_t now) {
    return since != 0 && now - since > (int64_t)(comm_watchdog().timeout_s * 1000);
}

#ifdef MST_WATCH_DEVICE_COLLECTIVES
// the device collectives that finished go back to the spares (with the mutex held)
static inline void comm_watchdog_reclaim(CommWatchdog& w) {
    while (!w.in_flight.empty() && cudaEventQuery(w.in_flight.front().done) == cudaSuccess) {
        w.spare.push_back(w.in_flight.front());
        w.in_flight.pop_front();
    }
}

// the oldest unfinished device collective is timed from when its start was first seen reached
static inline void comm_watchdog_check_device(int64_t now) {
    CommWatchdog& w = comm_watchdog();
    std::lock_guard<std::mutex> lock(w.mutex);
    comm_watchdog_reclaim(w);
    if (w.in_flight.empty()) return;
    CommWatchdog::DeviceWait& oldest = w.in_flight.front();
    if (oldest.started == 0 && cudaEventQuery(oldest.start) == cudaSuccess) oldest.started = now;
    if (comm_watchdog_expired(oldest.started, now)) comm_watchdog_expire(oldest.call);
}
#endif

// Starts the watchdog (once, after MPI started): timeout_s 0 leaves it off
static inline void comm_watchdog_start(double timeout_s, int rank) {
    CommWatchdog& w = comm_watchdog();
    if (timeout_s <= 0 || w.timeout_s > 0) return;
    w.timeout_s = timeout_s;
    w.rank = rank;
#ifdef MST_WATCH_DEVICE_COLLECTIVES
    const int pairs = 1024;  // more collectives in flight than this: the trainer waits for the oldest
    for (int i = 0; i < pairs; i++) {
        CommWatchdog::DeviceWait d{};
        if (cudaEventCreateWithFlags(&d.start, cudaEventDisableTiming) != cudaSuccess ||
            cudaEventCreateWithFlags(&d.done, cudaEventDisableTiming) != cudaSuccess) {
            fprintf(stderr, "error: rank %d: comm: cannot create the watchdog's events\n", rank);
            exit(1);
        }
        w.spare.push_back(d);
    }
#endif
    std::thread([] {
        CommWatchdog& w = comm_watchdog();
        for (;;) {
            std::this_thread::sleep_for(std::chrono::milliseconds(250));
            int64_t now = comm_watchdog_now_ms();
            if (comm_watchdog_expired(w.host_wait_since.load(), now)) comm_watchdog_expire(w.host_wait_call.load());
#ifdef MST_WATCH_DEVICE_COLLECTIVES
            comm_watchdog_check_device(now);
#endif
        }
    }).detach();  // it sleeps until the process ends
}

// A host wait in a collective, from construction to destruction (one at a time: the calling thread's)
struct CommWait {
    explicit CommWait(const char* call) {
        CommWatchdog& w = comm_watchdog();
        if (w.timeout_s <= 0) return;
        w.host_wait_call.store(call);
        w.host_wait_since.store(comm_watchdog_now_ms());
    }
    ~CommWait() { comm_watchdog().host_wait_since.store(0); }
    CommWait(const CommWait&) = delete;
    CommWait& operator=(const CommWait&) = delete;
};

#ifdef MST_WATCH_DEVICE_COLLECTIVES
// A device collective enqueued on `stream` by enqueue(): watched from its start to its end
template <typename Enqueue>
static inline void comm_watch_device_collective(cudaStream_t stream, const char* call, Enqueue enqueue) {
    CommWatchdog& w = comm_watchdog();
    if (w.timeout_s <= 0) return enqueue();
    CommWatchdog::DeviceWait d;
    for (;;) {  // every pair in flight: wait for the oldest to finish (the watchdog times it meanwhile)
        {
            std::lock_guard<std::mutex> lock(w.mutex);
            comm_watchdog_reclaim(w);
            if (!w.spare.empty()) { d = w.spare.back(); w.spare.pop_back(); break; }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    d.call = call;
    d.started = 0;
    cudaEventRecord(d.start, stream);
    enqueue();
    cudaEventRecord(d.done, stream);
    std::lock_guard<std::mutex> lock(w.mutex);
    w.in_flight.push_back(d);
}
#endif
