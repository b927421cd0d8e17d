// lstm_jax CPU kernel: the LSTM recurrence as two XLA FFI handlers (forward, backward).
//
// Time-major, one layer and direction, float32. Per step the forward kernel runs ONE GEMM,
// [x_t | h * mask] [W_x; W_h] (the input projection fused into the recurrent product, so no
// [t, b, 4h] projection is ever written), with its own register-blocked micro-kernel over a copy
// of both weights packed once per call, and applies the bias, the gate nonlinearities and the
// state update to each block of the product while it is still in cache (the GEMM's epilogue): the
// weights are packed in panels of VL hidden units x 4 gates (VL = the floats in one vector
// register), so one panel's product holds everything the state update of those units needs. The
// backward kernel does the same with W_h^T (panels of 2 VL hidden units, the GEMM split along 4h
// in chunks that stay in L1): the product dz_t W_h^T of a panel is followed at once by the gate
// derivatives of step t - 1 for those units. Panels are split across a team of XLA's threads
// (thread_pool.h) within a step (one barrier per step) when the step is large enough to pay for it.
// Lengths: past lengths[b] the carry is frozen and the outputs are zero.
// Leading axes before [t, b, .] are independent problems (jax.vmap with
// vmap_method="broadcast_all": ensemble members), each with its own weights; they run in parallel
// (XLA's threads take them one at a time).
//
// A third handler, LstmCpuWeightGrads, computes [dW_x; dW_h] = [X | H_prev]^T dZ and db in one
// blocked GEMM (weight_grads.h). The backward recurrence is in backward.h, what both recurrences
// share in recurrence.h, the fast tanh/sigmoid in fast_math.h, the packed GEMM micro-kernels in
// packed_gemm.h, the threads in thread_pool.h.
//
// Forward inputs:  xs [..., t, b, d], w_x [..., d, 4h], b [..., 4h], w_h [..., h, 4h],
//                  h0 [..., b, h], c0 [..., b, h], lengths [..., b] int32, mask [..., b, h]
// Forward outputs: ys [..., t, b, h], h_T, c_T [..., b, h]
//                  and with residuals (LstmCpuForwardTrain): acts [..., t, b, 4h] (i, f, g, o after
//                  their nonlinearities), cs [..., t, b, h] (cell state after each step)
// Backward inputs: w_h, acts, cs, c0, lengths, mask, dys [..., t, b, h], dh_T, dc_T [..., b, h]
// Backward outputs: dz [..., t, b, 4h] (gradient of the gate pre-activations; may alias acts:
//                  each step's activations are read just before its dz overwrites them),
//                  dh0, dc0 [..., b, h]

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "backward.h"
#include "fast_math.h"
#include "packed_gemm.h"
#include "recurrence.h"
#include "thread_pool.h"
#include "weight_grads.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using namespace lstm_jax_cpu;  // NOLINT: the kernel's own headers

namespace {

using Threads = ffi::ThreadPool;  // XLA's intra-op threads, handed to every call

// fn(m, threads) for every problem m < members: several members are taken one at a time by XLA's
// threads (each member on one thread; a thread that starts late takes fewer), a single one gets
// up to `threads` threads for its steps.
template <class Fn>
void each_member(Threads* pool, int64_t members, int threads, Fn fn) {
  if (members == 1) {
    fn(0, threads);
    return;
  }
  run_claim(pool, members, members, [&](int64_t m) { fn(m, 1); });
}

// The shapes of xs [..., t, b, d] (or dz [..., t, b, 4h] with d = 4h) and w_h [..., h, 4h].
ffi::Error get_dims(const ffi::Buffer<ffi::F32>& xs, const ffi::Buffer<ffi::F32>& w_h, Dims* d) {
  auto xd = xs.dimensions();
  auto wd = w_h.dimensions();
  if (xd.size() < 3 || wd.size() < 2 || xd.size() != wd.size() + 1) {
    return ffi::Error::InvalidArgument("lstm_cpu: expected xs [..., t, b, d] and w_h [..., h, 4h]");
  }
  int64_t r = xd.size();
  d->t = xd[r - 3];
  d->b = xd[r - 2];
  d->d = xd[r - 1];
  d->h = wd[wd.size() - 2];
  if (wd[wd.size() - 1] != 4 * d->h) return ffi::Error::InvalidArgument("lstm_cpu: expected w_h [..., h, 4h]");
  d->members = 1;
  for (int64_t i = 0; i < r - 3; ++i) {
    if (xd[i] != wd[i]) return ffi::Error::InvalidArgument("lstm_cpu: leading axes of xs and w_h differ");
    d->members *= xd[i];
  }
  return ffi::Error::Success();
}

// ----------------------------------------------------------------------------- forward
// A panel holds VL hidden units x 4 gates (4 vectors), in FW_SUBS sub-panels of FW_NV vectors: the
// micro-kernel runs one sub-panel at a time, so its accumulators fit the register file.
#ifdef __AVX512F__
constexpr int FW_NV = 4;
#else
constexpr int FW_NV = 2;
#endif
constexpr int FW_SUBS = 4 / FW_NV;
constexpr int FW_U = VL;      // hidden units per panel
constexpr int FW_W = 4 * VL;  // floats per panel row (and per row of the product buffer)

// [W_x; W_h] ([D + H, 4H]) -> panels [P][FW_SUBS][D + H][FW_NV * VL]: panel p, sub-panel s, row k,
// column v * VL + u = W[k, q * H + VL * p + u] with gate q = s * FW_NV + v.
void pack_forward(const float* w_x, const float* w_h, int64_t D, int64_t H, float* out) {
  const int64_t P = (H + FW_U - 1) / FW_U, G = 4 * H, K = D + H;
  for (int64_t p = 0; p < P; ++p) {
    const int64_t j0 = p * FW_U, n = std::min<int64_t>(FW_U, H - j0);  // units of this panel
    for (int s = 0; s < FW_SUBS; ++s)
      for (int64_t k = 0; k < K; ++k) {
        const float* row = k < D ? w_x + k * G : w_h + (k - D) * G;
        float* dst = out + ((p * FW_SUBS + s) * K + k) * FW_NV * VL;
        for (int v = 0; v < FW_NV; ++v) {  // one vector: units j0.. of gate s * FW_NV + v
          std::copy(row + (s * FW_NV + v) * H + j0, row + (s * FW_NV + v) * H + j0 + n, dst + v * VL);
          std::fill(dst + v * VL + n, dst + (v + 1) * VL, 0.0f);
        }
      }
  }
}

struct ForwardArgs {
  const float *xs, *w_x, *b, *w_h, *h0, *c0;
  const int32_t* lengths;
  const float* mask;
  float *ys, *h_out, *c_out, *acts, *cs;  // acts, cs: only with kStore
};

// The gate update of n units of one row: g its block of the product (gate q of unit u at
// q * VL + u), z the bias, c the cell state (updated); writes h, y, h * mask and, with kStore, the
// activations (gate q at q * ha) and the new cell state. kN > 0: n = kN known at compile time (a
// whole panel: one straight run of vector code, no remainder loop).
template <bool kStore, int kN>
inline void update_units(int64_t n, int64_t H, int64_t ha, const float* g, const float* z, const float* m, float* c,
                         float* h, float* y, float* hn_m, float* act, float* c_st) {
  const int64_t units = kN > 0 ? kN : n;
#pragma omp simd
  for (int64_t u = 0; u < units; ++u) {
    float ig = sigmoid(g[u] + z[u]), fg = sigmoid(g[FW_U + u] + z[H + u]);
    float gg = tanh_f(g[2 * FW_U + u] + z[2 * H + u]), og = sigmoid(g[3 * FW_U + u] + z[3 * H + u]);
    float cn = fg * c[u] + ig * gg;
    float hv = og * tanh_f(cn);
    c[u] = cn;
    h[u] = hv;
    y[u] = hv;
    hn_m[u] = hv * m[u];
    if constexpr (kStore) {
      act[u] = ig;
      act[ha + u] = fg;
      act[2 * ha + u] = gg;
      act[3 * ha + u] = og;
      c_st[u] = cn;
    }
  }
}

// The gate update of every row and units [j0, j0 + jn) at step t, from their block of the
// product prod ([b][4 VL]) and the bias.
template <bool kStore>
inline void gate_update(const Dims& d, const ForwardArgs& a, int64_t t, int64_t j0, int64_t jn, const float* prod,
                        const float* cur, float* nxt) {
  const int64_t B = d.b, H = d.h, G = 4 * d.h;
  for (int64_t b = 0; b < B; ++b) {
    float* h = a.h_out + b * H + j0;
    float* c = a.c_out + b * H + j0;
    float* y = a.ys + (t * B + b) * H + j0;
    float* hn_m = nxt + b * H + j0;
    float* act = kStore ? a.acts + (t * B + b) * G + j0 : nullptr;
    float* c_st = kStore ? a.cs + (t * B + b) * H + j0 : nullptr;
    if (t >= a.lengths[b]) {  // frozen carry, zero outputs
      std::fill(y, y + jn, 0.0f);
      if constexpr (kStore) {
        for (int q = 0; q < 4; ++q) std::fill(act + q * H, act + q * H + jn, 0.0f);
        std::copy(c, c + jn, c_st);
      }
      std::copy(cur + b * H + j0, cur + b * H + j0 + jn, hn_m);
    } else if (jn == FW_U && kStore && streamable(act) && streamable(c_st) && H % VL == 0) {
      alignas(64) float st[5 * FW_U];  // the 4 gates' activations and the cell state, streamed out
      update_units<kStore, FW_U>(jn, H, FW_U, prod + b * FW_W, a.b + j0, a.mask + b * H + j0, c, h, y, hn_m, st,
                                 st + 4 * FW_U);
      for (int q = 0; q < 4; ++q) stream_store(act + q * H, st + q * FW_U, FW_U);
      stream_store(c_st, st + 4 * FW_U, FW_U);
    } else if (jn == FW_U) {
      update_units<kStore, FW_U>(jn, H, H, prod + b * FW_W, a.b + j0, a.mask + b * H + j0, c, h, y, hn_m, act, c_st);
    } else {
      update_units<kStore, 0>(jn, H, H, prod + b * FW_W, a.b + j0, a.mask + b * H + j0, c, h, y, hn_m, act, c_st);
    }
  }
  if constexpr (kStore) stream_fence();
}

// One forward problem: per step t and panel, the product [x_t | h * mask] [W_x; W_h] of all rows
// (sub-panel by sub-panel, each sub-panel staying in L1 across the rows), then the gate update.
template <bool kStore>
void forward_one(const Dims& d, const ForwardArgs& a, Threads* pool, int threads) {
  const int64_t B = d.b, D = d.d, H = d.h, K = D + H, P = (H + FW_U - 1) / FW_U;
  float* packed = scratch<float>(0, P * K * FW_W);
  float* hm0 = scratch<float>(1, B * H);
  float* hm1 = scratch<float>(2, B * H);
  pack_forward(a.w_x, a.w_h, D, H, packed);
  std::copy(a.h0, a.h0 + B * H, a.h_out);
  std::copy(a.c0, a.c0 + B * H, a.c_out);
  for (int64_t k = 0; k < B * H; ++k) hm0[k] = a.h_out[k] * a.mask[k];
  const int64_t* live = live_rows(d, a.lengths, 3);
  float* prods = scratch<float>(4, max_team(pool, threads) * B * FW_W);  // per member: its product block of one panel
  run_steps(pool, threads, d.t, [&](int64_t t, int tid, int size) {
    float* prod = prods + tid * B * FW_W;
    int64_t p_lo, p_hi;  // this member's panels
    share(P, tid, size, &p_lo, &p_hi);
    const float* cur = (t % 2 == 0) ? hm0 : hm1;  // h * mask entering step t (read by every panel)
    float* nxt = (t % 2 == 0) ? hm1 : hm0;        // ... leaving it (each panel writes its units)
    const float* x_t = a.xs + t * B * D;
    for (int64_t p = p_lo; p < p_hi; ++p) {
      const int64_t j0 = p * FW_U, jn = std::min<int64_t>(FW_U, H - j0);
      const int64_t rows = live[t], step_rows = even_rows(rows, FW_MR);  // rows past live[t] are frozen
      if (rows > 0) {
        for (int s = 0; s < FW_SUBS; ++s) {
          const float* panel = packed + (p * FW_SUBS + s) * K * FW_NV * VL;
          for (int64_t r0 = 0; r0 < rows; r0 += step_rows) {
            const int mr = static_cast<int>(std::min<int64_t>(step_rows, rows - r0));
            micro_rows<FW_NV, FW_MR>(mr, x_t + r0 * D, D, D, cur + r0 * H, H, H, panel,
                                     prod + r0 * FW_W + s * FW_NV * VL, FW_W);
          }
        }
      }
      gate_update<kStore>(d, a, t, j0, jn, prod, cur, nxt);
    }
  });  // a barrier between steps: step t + 1 reads every panel's units of nxt
}

ffi::Error Forward(Threads* pool, ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> w_x, ffi::Buffer<ffi::F32> b,
                   ffi::Buffer<ffi::F32> w_h, ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                   ffi::Buffer<ffi::S32> lengths, ffi::Buffer<ffi::F32> mask, ffi::ResultBuffer<ffi::F32> ys,
                   ffi::ResultBuffer<ffi::F32> h_T, ffi::ResultBuffer<ffi::F32> c_T, float* acts, float* cs) {
  Dims d;
  if (auto e = get_dims(xs, w_h, &d); e.failure()) return e;
  const int64_t B = d.b, D = d.d, H = d.h, G = 4 * d.h, T = d.t;
  auto wxd = w_x.dimensions();
  if (wxd.size() != w_h.dimensions().size() || wxd[wxd.size() - 2] != D || wxd[wxd.size() - 1] != G ||
      static_cast<int64_t>(b.element_count()) != d.members * G) {
    return ffi::Error::InvalidArgument("lstm_cpu: expected w_x [..., d, 4h] and b [..., 4h]");
  }
  const size_t n_out = static_cast<size_t>(d.members) * T * B;
  advise_huge(ys->typed_data(), n_out * H * sizeof(float));
  if (acts) advise_huge(acts, n_out * G * sizeof(float));
  if (cs) advise_huge(cs, n_out * H * sizeof(float));
  each_member(pool, d.members, step_threads(B, D + H, H), [&](int64_t m, int threads) {
    ForwardArgs a{xs.typed_data() + m * T * B * D,
                  w_x.typed_data() + m * D * G,
                  b.typed_data() + m * G,
                  w_h.typed_data() + m * H * G,
                  h0.typed_data() + m * B * H,
                  c0.typed_data() + m * B * H,
                  lengths.typed_data() + m * B,
                  mask.typed_data() + m * B * H,
                  ys->typed_data() + m * T * B * H,
                  h_T->typed_data() + m * B * H,
                  c_T->typed_data() + m * B * H,
                  acts ? acts + m * T * B * G : nullptr,
                  cs ? cs + m * T * B * H : nullptr};
    if (acts) {
      forward_one<true>(d, a, pool, threads);
    } else {
      forward_one<false>(d, a, pool, threads);
    }
  });
  return ffi::Error::Success();
}

ffi::Error ForwardInfer(Threads pool, ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> w_x, ffi::Buffer<ffi::F32> b,
                        ffi::Buffer<ffi::F32> w_h, ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                        ffi::Buffer<ffi::S32> lengths, ffi::Buffer<ffi::F32> mask, ffi::ResultBuffer<ffi::F32> ys,
                        ffi::ResultBuffer<ffi::F32> h_T, ffi::ResultBuffer<ffi::F32> c_T) {
  return Forward(&pool, xs, w_x, b, w_h, h0, c0, lengths, mask, ys, h_T, c_T, nullptr, nullptr);
}

ffi::Error ForwardTrain(Threads pool, ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> w_x, ffi::Buffer<ffi::F32> b,
                        ffi::Buffer<ffi::F32> w_h, ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                        ffi::Buffer<ffi::S32> lengths, ffi::Buffer<ffi::F32> mask, ffi::ResultBuffer<ffi::F32> ys,
                        ffi::ResultBuffer<ffi::F32> h_T, ffi::ResultBuffer<ffi::F32> c_T,
                        ffi::ResultBuffer<ffi::F32> acts, ffi::ResultBuffer<ffi::F32> cs) {
  return Forward(&pool, xs, w_x, b, w_h, h0, c0, lengths, mask, ys, h_T, c_T, acts->typed_data(),
                 cs->typed_data());
}

ffi::Error Backward(Threads pool, ffi::Buffer<ffi::F32> w_h, ffi::Buffer<ffi::F32> acts, ffi::Buffer<ffi::F32> cs,
                    ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::S32> lengths, ffi::Buffer<ffi::F32> mask,
                    ffi::Buffer<ffi::F32> dys, ffi::Buffer<ffi::F32> dh_T, ffi::Buffer<ffi::F32> dc_T,
                    ffi::ResultBuffer<ffi::F32> dz, ffi::ResultBuffer<ffi::F32> dh0, ffi::ResultBuffer<ffi::F32> dc0) {
  Dims d;
  if (auto e = get_dims(acts, w_h, &d); e.failure()) return e;
  const int64_t B = d.b, H = d.h, G = 4 * d.h, T = d.t;
  each_member(&pool, d.members, step_threads(B, H, H), [&](int64_t m, int threads) {
    backward_one(d, w_h.typed_data() + m * H * G, acts.typed_data() + m * T * B * G, cs.typed_data() + m * T * B * H,
                 c0.typed_data() + m * B * H, lengths.typed_data() + m * B, mask.typed_data() + m * B * H,
                 dys.typed_data() + m * T * B * H, dh_T.typed_data() + m * B * H, dc_T.typed_data() + m * B * H,
                 dz->typed_data() + m * T * B * G, dh0->typed_data() + m * B * H, dc0->typed_data() + m * B * H,
                 &pool, threads);
  });
  return ffi::Error::Success();
}

// dW = [X | H_prev]^T dZ and db (weight_grads.h) of every problem: xs [..., t, b, d],
// ys [..., t, b, h], h0 and mask [..., b, h], dz [..., t, b, 4h] -> dw [..., d + h, 4h], db [..., 4h].
ffi::Error WeightGrads(Threads pool, ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> ys, ffi::Buffer<ffi::F32> h0,
                       ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> dz, ffi::ResultBuffer<ffi::F32> dw,
                       ffi::ResultBuffer<ffi::F32> db) {
  auto xd = xs.dimensions();
  const int64_t r = xd.size();
  if (r < 3 || ys.dimensions().size() != xd.size()) {
    return ffi::Error::InvalidArgument("lstm_cpu: expected xs [..., t, b, d] and ys [..., t, b, h]");
  }
  const int64_t T = xd[r - 3], B = xd[r - 2], D = xd[r - 1], H = ys.dimensions()[r - 1], G = 4 * H;
  const int64_t members = static_cast<int64_t>(xs.element_count()) / std::max<int64_t>(1, T * B * D);
  if (static_cast<int64_t>(ys.element_count()) != members * T * B * H ||
      static_cast<int64_t>(dz.element_count()) != members * T * B * G ||
      static_cast<int64_t>(h0.element_count()) != members * B * H ||
      static_cast<int64_t>(mask.element_count()) != members * B * H ||
      static_cast<int64_t>(dw->element_count()) != members * (D + H) * G ||
      static_cast<int64_t>(db->element_count()) != members * G) {
    return ffi::Error::InvalidArgument("lstm_cpu: weight gradient operands of mismatched shapes");
  }
  each_member(&pool, members, step_threads(T * B, D + H, H), [&](int64_t m, int threads) {
    WeightGradArgs a{xs.typed_data() + m * T * B * D,
                     ys.typed_data() + m * T * B * H,
                     h0.typed_data() + m * B * H,
                     mask.typed_data() + m * B * H,
                     dz.typed_data() + m * T * B * G,
                     T,
                     B,
                     D,
                     H,
                     dw->typed_data() + m * (D + H) * G,
                     db->typed_data() + m * G};
    weight_grads(a, &pool, threads);
  });
  return ffi::Error::Success();
}

}  // namespace

#define LSTM_CPU_FORWARD_ARGS                                                                            \
  ffi::Ffi::Bind()                                                                                       \
      .Ctx<ffi::ThreadPool>()                                                                            \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                      \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                      \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                      \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                      \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                      \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                      \
      .Arg<ffi::Buffer<ffi::S32>>()                                                                      \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                      \
      .Ret<ffi::Buffer<ffi::F32>>()                                                                      \
      .Ret<ffi::Buffer<ffi::F32>>()                                                                      \
      .Ret<ffi::Buffer<ffi::F32>>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmCpuForward, ForwardInfer, LSTM_CPU_FORWARD_ARGS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmCpuForwardTrain, ForwardTrain,
                              LSTM_CPU_FORWARD_ARGS.Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmCpuWeightGrads, WeightGrads,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmCpuBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
