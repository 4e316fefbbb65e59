// Host emulation of the CUDA built-ins the kernels use, for tests/emulate.rs:
// every CUDA thread of a block is an OS thread, blocks run one after another,
// __syncthreads and warp shuffles are barriers. Slow, but it runs the exact
// kernel source (index math, tiling, chunking, masking, reductions) on the
// CPU, under AddressSanitizer.
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>
#include <algorithm>

using std::max;
using std::min;

#define NA_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static

struct EmuDim {
    unsigned x, y, z;
};
thread_local EmuDim threadIdx, blockIdx;
static EmuDim blockDim, gridDim;

// A sleeping barrier (mutex + condition variable): with 128 OS threads on a
// few cores, spinning barriers (std::barrier) starve everything else.
class EmuBarrier {
  public:
    explicit EmuBarrier(unsigned n) : n_(n) {}
    void arrive_and_wait() {
        std::unique_lock<std::mutex> lock(m_);
        const unsigned long gen = gen_;
        if (++count_ == n_) {
            count_ = 0;
            ++gen_;
            cv_.notify_all();
        } else {
            cv_.wait(lock, [&] { return gen_ != gen; });
        }
    }

  private:
    std::mutex m_;
    std::condition_variable cv_;
    unsigned n_, count_ = 0;
    unsigned long gen_ = 0;
};

static EmuBarrier* emu_block_barrier;
static EmuBarrier* emu_warp_barrier[64];
static float emu_exchange[64][32];

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) {
    emu_warp_barrier[threadIdx.x / 32]->arrive_and_wait();
}
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
    emu_exchange[w][l] = v;
    __syncwarp();
    const float r = emu_exchange[w][l ^ (unsigned)lane_mask];
    __syncwarp();
    return r;
}
inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}

// Runs `body` as `blocks` blocks of `threads` threads.
template <class F>
void emu_launch(unsigned blocks, unsigned threads, F body) {
    EmuBarrier block_barrier(threads);
    emu_block_barrier = &block_barrier;
    std::vector<std::unique_ptr<EmuBarrier>> warps;
    for (unsigned w = 0; w < threads / 32; ++w) {
        warps.emplace_back(new EmuBarrier(32));
        emu_warp_barrier[w] = warps.back().get();
    }
    blockDim = {threads, 1, 1};
    gridDim = {blocks, 1, 1};
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < threads; ++t) {
        ts.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            for (unsigned b = 0; b < blocks; ++b) {
                blockIdx = {b, 0, 0};
                body();
                block_barrier.arrive_and_wait();  // the block is done with shared memory
            }
        });
    }
    for (auto& t : ts) t.join();
}
