// lstm_jax CPU kernel: what the forward and backward recurrences share: the problem's sizes, the
// rows still inside their sequences at each step, and when a step is worth several threads.
#pragma once

#include <algorithm>
#include <cstdint>

#include "packed_gemm.h"

namespace lstm_jax_cpu {

// Threads for one step of b rows x k inputs: all there are from 2^20 multiply-adds on (measured
// on 2 cores; below it a thread that loses its core for a moment stalls every per-step barrier).
inline int step_threads(int64_t b, int64_t k, int64_t h) { return b * k * 4 * h >= (int64_t{1} << 20) ? 1 << 16 : 1; }

struct Dims {
  int64_t members, t, b, d, h;
};

// Per step t, the rows [0, live[t]) that hold every row still inside its sequence (1 + the last
// row b with t < lengths[b]; 0 when none is): the per-step GEMMs run over those rows only, so a
// batch sorted longest first (the Python side sorts it) pays for its valid steps, not its padding.
// In the calling thread's scratch slot `slot`.
inline const int64_t* live_rows(const Dims& d, const int32_t* lengths, int slot) {
  int64_t* live = scratch<int64_t>(slot, d.t);
  std::fill(live, live + d.t, 0);
  for (int64_t b = 0; b < d.b; ++b)
    for (int64_t t = 0; t < std::min<int64_t>(lengths[b], d.t); ++t) live[t] = b + 1;
  return live;
}

}  // namespace lstm_jax_cpu
