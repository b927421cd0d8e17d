// lstm_jax CPU kernel: the register-blocked GEMM micro-kernels over packed weight panels, the
// vector width they are built for, and the aligned scratch memory they work in.
#pragma once

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace lstm_jax_cpu {

// One vector register of floats: 16 with AVX-512 (32 registers), else 8 (AVX2: 16 ymm registers;
// elsewhere the compiler splits it). Rows per micro-kernel call are chosen so that the
// accumulators, one panel row and a broadcast fit in the register file (no spills).
#ifdef __AVX512F__
constexpr int VL = 16;
constexpr int FW_MR = 6;   // 6 rows x 4 vectors = 24 accumulators (of 32 registers)
constexpr int BW_MR = 12;  // 12 rows x 2 vectors
#else
constexpr int VL = 8;
constexpr int FW_MR = 6;  // 6 rows x 2 vectors = 12 accumulators, + 2 panel + 1 broadcast (of 16)
constexpr int BW_MR = 6;
#endif
typedef float vf __attribute__((vector_size(VL * sizeof(float))));

// Scratch memory of the calling thread that outlives a call: slot `slot` grows to the largest
// size any call asked of it and is then reused, so a kernel call allocates nothing (XLA calls
// the kernels from its few threads, an ensemble's members run on all of them at once, and their
// mallocs queued on one lock). 64-byte aligned, not zeroed: every use writes before it reads.
template <class T>
T* scratch(int slot, size_t n) {
  struct Slots {
    void* p[8] = {};
    size_t bytes[8] = {};
    ~Slots() {
      for (void* q : p) std::free(q);
    }
  };
  thread_local Slots slots;
  const size_t want = ((n * sizeof(T) + 63) / 64) * 64;
  if (slots.bytes[slot] < want) {
    std::free(slots.p[slot]);
    slots.p[slot] = std::aligned_alloc(64, want);
    slots.bytes[slot] = want;
  }
  return static_cast<T*>(slots.p[slot]);
}

// Ask for transparent huge pages on a large output buffer before the kernel first writes it: XLA
// allocates fresh (untouched) memory for big outputs on each call, and faulting it in 4 KiB pages
// costs more than the recurrence writing it (measured: 35k page faults, 50 ms per call at
// t=256, b=64, h=256). Advice only: where THP is off this does nothing.
inline void advise_huge(void* p, size_t bytes) {
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (bytes < 2 * kHuge) return;
  uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
}

// dst[0:n] = src[0:n] (both aligned to a vector, n a multiple of VL) with non-temporal stores: for
// what the kernel writes once and reads back only in another call (the stored activations, some
// 100 MB at t = 256, b = 64, h = 256), a plain store would first read each line it fills.
// stream_fence() orders them before the per-step barrier that publishes them.
inline void stream_fence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}
inline bool streamable(const void* p) { return reinterpret_cast<uintptr_t>(p) % sizeof(vf) == 0; }
inline void stream_store(float* dst, const float* src, int64_t n) {
#if defined(__AVX512F__)
  for (int64_t i = 0; i < n; i += 16) _mm512_stream_ps(dst + i, _mm512_load_ps(src + i));
#elif defined(__AVX__)
  for (int64_t i = 0; i < n; i += 8) _mm256_stream_ps(dst + i, _mm256_load_ps(src + i));
#else
  std::memcpy(dst, src, n * sizeof(float));
#endif
}

// acc[r][v] += sum_k A[r, k] * P[k * NV * VL + v * VL : ...] for r < MR, k < K, where A[r, k] is
// A[r * lda + k] (rows of a matrix), or with kPacked A[k * MR + r] (a micro-panel packed k-major).
template <int NV, int MR, bool kPacked = false>
__attribute__((always_inline)) inline void accumulate(vf (&acc)[MR][NV], const float* A, int64_t lda, const float* P,
                                                      int64_t K) {
  for (int64_t k = 0; k < K; ++k) {
    const vf* p = reinterpret_cast<const vf*>(P + k * NV * VL);
    vf b[NV];
    for (int v = 0; v < NV; ++v) b[v] = p[v];
    for (int r = 0; r < MR; ++r) {
      const float a = kPacked ? A[k * MR + r] : A[r * lda + k];
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
}

// out[r * ldo + 0 : NV * VL] (+)= A1[r, :K1] P[:K1] + A2[r, :K2] P[K1:K1 + K2] for r < MR, where P
// is a packed panel [K1 + K2][NV * VL]: one GEMM over two operands side by side ([x_t | h] W in
// the forward pass, with K2 = 0 elsewhere); with add, onto what out holds (a GEMM split along K).
template <int NV, int MR>
inline void micro(const float* A1, int64_t lda1, int64_t K1, const float* A2, int64_t lda2, int64_t K2,
                  const float* P, float* out, int64_t ldo, bool add) {
  vf acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = vf{};
      if (add) std::memcpy(&acc[r][v], out + r * ldo + v * VL, sizeof(vf));
    }
  accumulate<NV, MR>(acc, A1, lda1, P, K1);
  accumulate<NV, MR>(acc, A2, lda2, P + K1 * NV * VL, K2);
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) std::memcpy(out + r * ldo + v * VL, &acc[r][v], sizeof(vf));
}

// micro<NV, mr> for a run-time mr in [1, MR].
template <int NV, int MR>
inline void micro_rows(int mr, const float* A1, int64_t lda1, int64_t K1, const float* A2, int64_t lda2, int64_t K2,
                       const float* P, float* out, int64_t ldo, bool add = false) {
  if (mr == MR) {
    micro<NV, MR>(A1, lda1, K1, A2, lda2, K2, P, out, ldo, add);
  } else if constexpr (MR > 1) {
    micro_rows<NV, MR - 1>(mr, A1, lda1, K1, A2, lda2, K2, P, out, ldo, add);
  }
}

// Rows per micro-kernel call for b rows and at most mr: the fewest calls, their rows as even as can
// be (b = 8, mr = 6: 4 + 4 rather than 6 + 2, whose 2-row call cannot hide the FMA latency).
inline int64_t even_rows(int64_t b, int64_t mr) {
  const int64_t calls = (b + mr - 1) / mr;
  return calls > 0 ? (b + calls - 1) / calls : mr;
}

}  // namespace lstm_jax_cpu
