// lstm_jax CPU kernel: the LSTM recurrence as two XLA FFI handlers (forward, backward).
//
// Time-major, one layer and direction, float32. The input projection zx = x W_x + b is computed
// by XLA before the call (one large GEMM). Per step the kernel multiplies the (masked) h by W_h
// with its own register-blocked GEMM over a copy of W_h packed once per call, and applies the gate
// nonlinearities and state update to each block of the product while it is still in cache (the
// GEMM's epilogue): W_h is packed in panels of 16 hidden units x 4 gates, so one panel's product
// holds everything the state update of those 16 units needs. The backward pass does the same with
// W_h^T (panels of 32 hidden units): the product dz_t W_h^T of a panel is followed at once by the
// gate derivatives of step t - 1 for those units. Panels are split across OpenMP threads within a
// step (one barrier per step) when the step is large enough to pay for it.
// Lengths: past lengths[b] the carry is frozen and the outputs are zero.
// Leading axes before [t, b, .] are independent problems (jax.vmap with
// vmap_method="broadcast_all": ensemble members), each with its own W_h; they run in parallel
// (OpenMP threads, one member per thread at a time).
//
// Forward inputs:  zx [..., t, b, 4h], w_h [..., h, 4h], h0 [..., b, h], c0 [..., b, h],
//                  lengths [..., b] int32, mask [..., b, h]
// Forward outputs: ys [..., t, b, h], h_T, c_T [..., b, h]
//                  and with residuals (LstmCpuForwardTrain): acts [..., t, b, 4h] (i, f, g, o after
//                  their nonlinearities), cs [..., t, b, h] (cell state after each step)
// Backward inputs: w_h, acts, cs, c0, lengths, mask, dys [..., t, b, h], dh_T, dc_T [..., b, h]
// Backward outputs: dz [..., t, b, 4h] (gradient of the gate pre-activations), dh0, dc0 [..., b, h]

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline float sigmoid(float x) { return 0.5f * std::tanh(0.5f * x) + 0.5f; }

// ----------------------------------------------------------------------------- packed GEMM
// A 16-float vector (one AVX-512 register; two AVX2 registers elsewhere).
typedef float vf __attribute__((vector_size(64)));
constexpr int VL = 16;
#ifdef __AVX512F__
constexpr int kRegs = 24;  // accumulator registers of the micro-kernel (of 32)
#else
constexpr int kRegs = 6;  // 12 of 16 ymm registers
#endif

struct Aligned {  // 64-byte aligned float buffer
  float* p = nullptr;
  explicit Aligned(size_t n) {
    size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
    p = static_cast<float*>(std::aligned_alloc(64, bytes > 0 ? bytes : 64));
    std::memset(p, 0, bytes > 0 ? bytes : 64);
  }
  ~Aligned() { std::free(p); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
};

// out[r][0:NV*16] = sum_k A[r, k] * P[k][0:NV*16] for r < MR; P is a packed panel [K][NV*16].
template <int NV, int MR>
inline void micro(const float* A, int64_t lda, const float* P, int64_t K, float* out) {
  vf acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vf{};
  for (int64_t k = 0; k < K; ++k) {
    const vf* p = reinterpret_cast<const vf*>(P + k * NV * VL);
    vf b[NV];
    for (int v = 0; v < NV; ++v) b[v] = p[v];
    for (int r = 0; r < MR; ++r) {
      const float a = A[r * lda + k];
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) std::memcpy(out + (r * NV + v) * VL, &acc[r][v], sizeof(vf));
}

// micro<NV, mr> for a run-time mr in [1, MR].
template <int NV, int MR>
inline void micro_rows(int mr, const float* A, int64_t lda, const float* P, int64_t K, float* out) {
  if (mr == MR) {
    micro<NV, MR>(A, lda, P, K, out);
  } else if constexpr (MR > 1) {
    micro_rows<NV, MR - 1>(mr, A, lda, P, K, out);
  }
}

// Worth splitting one step over threads: about 2^20 multiply-adds or more (measured).
inline bool threaded(int64_t b, int64_t h) { return b * h * 4 * h >= (int64_t{1} << 20); }

struct Dims {
  int64_t members, t, b, h;
};

ffi::Error get_dims(const ffi::Buffer<ffi::F32>& zx_or_acts, const ffi::Buffer<ffi::F32>& w_h, Dims* d) {
  auto zd = zx_or_acts.dimensions();
  auto wd = w_h.dimensions();
  if (zd.size() < 3 || wd.size() < 2 || zd.size() != wd.size() + 1) {
    return ffi::Error::InvalidArgument("lstm_cpu: expected zx [..., t, b, 4h] and w_h [..., h, 4h]");
  }
  int64_t r = zd.size();
  d->t = zd[r - 3];
  d->b = zd[r - 2];
  d->h = wd[wd.size() - 2];
  if (zd[r - 1] != 4 * d->h || wd[wd.size() - 1] != 4 * d->h) {
    return ffi::Error::InvalidArgument("lstm_cpu: expected the last axis of zx and w_h to be 4h");
  }
  d->members = 1;
  for (int64_t i = 0; i < r - 3; ++i) {
    if (zd[i] != wd[i]) return ffi::Error::InvalidArgument("lstm_cpu: leading axes of zx and w_h differ");
    d->members *= zd[i];
  }
  return ffi::Error::Success();
}

// ----------------------------------------------------------------------------- forward
constexpr int FW_NV = 4;                         // panel: 16 hidden units x 4 gates = 4 vectors
constexpr int FW_MR = std::max(1, kRegs / FW_NV);  // rows per micro-kernel call
constexpr int FW_U = VL;                         // hidden units per panel

// W_h [H, 4H] -> panels [P][H][64]: panel p, row k, column q*16 + u = W_h[k, q*H + 16p + u].
void pack_forward(const float* w_h, int64_t H, float* out) {
  const int64_t P = (H + FW_U - 1) / FW_U, G = 4 * H;
  for (int64_t p = 0; p < P; ++p)
    for (int64_t k = 0; k < H; ++k)
      for (int q = 0; q < 4; ++q)
        for (int u = 0; u < FW_U; ++u) {
          const int64_t j = p * FW_U + u;
          out[(p * H + k) * 4 * FW_U + q * FW_U + u] = j < H ? w_h[k * G + q * H + j] : 0.0f;
        }
}

// One forward problem. acts/cs may be null (inference).
void forward_one(const Dims& d, const float* zx, const float* w_h, const float* h0, const float* c0,
                 const int32_t* lengths, const float* mask, float* ys, float* h_out, float* c_out, float* acts,
                 float* cs) {
  const int64_t B = d.b, H = d.h, G = 4 * d.h, P = (H + FW_U - 1) / FW_U;
  Aligned packed(P * H * 4 * FW_U), hm0(B * H), hm1(B * H);
  pack_forward(w_h, H, packed.p);
  std::copy(h0, h0 + B * H, h_out);
  std::copy(c0, c0 + B * H, c_out);
  for (int64_t k = 0; k < B * H; ++k) hm0.p[k] = h_out[k] * mask[k];
  int32_t longest = 0;
  for (int64_t b = 0; b < B; ++b) longest = std::max(longest, lengths[b]);
#pragma omp parallel if (threaded(B, H))
  {
    alignas(64) float buf[FW_MR * FW_NV * VL];
    for (int64_t t = 0; t < d.t; ++t) {
      const float* cur = (t % 2 == 0) ? hm0.p : hm1.p;  // h * mask entering step t (read by every panel)
      float* nxt = (t % 2 == 0) ? hm1.p : hm0.p;        // ... leaving it (each panel writes its units)
      const float* zx_t = zx + t * B * G;
      float* y_t = ys + t * B * H;
#pragma omp for schedule(static)
      for (int64_t p = 0; p < P; ++p) {
        const int64_t j0 = p * FW_U, jn = std::min<int64_t>(FW_U, H - j0);
        for (int64_t r0 = 0; r0 < B; r0 += FW_MR) {
          const int mr = static_cast<int>(std::min<int64_t>(FW_MR, B - r0));
          if (t < longest) micro_rows<FW_NV, FW_MR>(mr, cur + r0 * H, H, packed.p + p * H * 4 * FW_U, H, buf);
          for (int r = 0; r < mr; ++r) {
            const int64_t b = r0 + r;
            float* h = h_out + b * H + j0;
            float* c = c_out + b * H + j0;
            float* y = y_t + b * H + j0;
            float* a = acts ? acts + (t * B + b) * G + j0 : nullptr;
            const float* m = mask + b * H + j0;
            float* hn_m = nxt + b * H + j0;
            if (t >= lengths[b]) {  // frozen carry, zero outputs
              std::fill(y, y + jn, 0.0f);
              if (a)
                for (int q = 0; q < 4; ++q) std::fill(a + q * H, a + q * H + jn, 0.0f);
              std::copy(cur + b * H + j0, cur + b * H + j0 + jn, hn_m);
            } else {
              const float* g = buf + r * FW_NV * VL;
              const float* z = zx_t + b * G + j0;
#pragma omp simd
              for (int64_t u = 0; u < jn; ++u) {
                float ig = sigmoid(g[u] + z[u]), fg = sigmoid(g[FW_U + u] + z[H + u]);
                float gg = std::tanh(g[2 * FW_U + u] + z[2 * H + u]), og = sigmoid(g[3 * FW_U + u] + z[3 * H + u]);
                float cn = fg * c[u] + ig * gg;
                float hv = og * std::tanh(cn);
                c[u] = cn;
                h[u] = hv;
                y[u] = hv;
                hn_m[u] = hv * m[u];
                if (a) {
                  a[u] = ig;
                  a[H + u] = fg;
                  a[2 * H + u] = gg;
                  a[3 * H + u] = og;
                }
              }
            }
            if (cs) std::copy(c, c + jn, cs + (t * B + b) * H + j0);
          }
        }
      }  // implicit barrier: step t + 1 reads every panel's units of nxt
    }
  }
}

// ----------------------------------------------------------------------------- backward
constexpr int BW_NV = 2;                         // panel: 32 hidden units = 2 vectors
constexpr int BW_MR = std::max(1, kRegs / BW_NV);
constexpr int BW_U = BW_NV * VL;

// W_h [H, 4H] -> W_h^T panels [P][4H][32]: panel p, row g, column u = W_h[32p + u, g].
void pack_backward(const float* w_h, int64_t H, float* out) {
  const int64_t P = (H + BW_U - 1) / BW_U, G = 4 * H;
  for (int64_t p = 0; p < P; ++p)
    for (int64_t g = 0; g < G; ++g)
      for (int u = 0; u < BW_U; ++u) {
        const int64_t k = p * BW_U + u;
        out[(p * G + g) * BW_U + u] = k < H ? w_h[k * G + g] : 0.0f;
      }
}

// dz of step t for rows b and units [k0, k0 + kn): the gate derivatives from dh, dc; updates dc.
inline void gate_grads(const Dims& d, int64_t t, int64_t b, int64_t k0, int64_t kn, const float* acts,
                       const float* cs, const float* c0, const int32_t* lengths, const float* dys, const float* dh,
                       float* dc, float* dz) {
  const int64_t B = d.b, H = d.h, G = 4 * d.h;
  float* z = dz + (t * B + b) * G + k0;
  if (t >= lengths[b]) {
    for (int q = 0; q < 4; ++q) std::fill(z + q * H, z + q * H + kn, 0.0f);
    return;
  }
  const float* a = acts + (t * B + b) * G + k0;
  const float* c_t = cs + (t * B + b) * H + k0;
  const float* c_prev = (t > 0 ? cs + ((t - 1) * B + b) * H : c0 + b * H) + k0;
  const float* dy = dys + (t * B + b) * H + k0;
  const float* dhb = dh + b * H + k0;
  float* dcb = dc + b * H + k0;
#pragma omp simd
  for (int64_t j = 0; j < kn; ++j) {
    float ig = a[j], fg = a[H + j], gg = a[2 * H + j], og = a[3 * H + j];
    float tc = std::tanh(c_t[j]);
    float dht = dy[j] + dhb[j];
    float dct = dcb[j] + dht * og * (1.0f - tc * tc);
    z[j] = dct * gg * ig * (1.0f - ig);
    z[H + j] = dct * c_prev[j] * fg * (1.0f - fg);
    z[2 * H + j] = dct * ig * (1.0f - gg * gg);
    z[3 * H + j] = dht * tc * og * (1.0f - og);
    dcb[j] = dct * fg;
  }
}

void backward_one(const Dims& d, const float* w_h, const float* acts, const float* cs, const float* c0,
                  const int32_t* lengths, const float* mask, const float* dys, const float* dh_T, const float* dc_T,
                  float* dz, float* dh, float* dc) {
  const int64_t B = d.b, H = d.h, G = 4 * d.h, P = (H + BW_U - 1) / BW_U;
  Aligned packed(P * G * BW_U);
  pack_backward(w_h, H, packed.p);
  std::copy(dh_T, dh_T + B * H, dh);
  std::copy(dc_T, dc_T + B * H, dc);
  if (d.t == 0) return;
#pragma omp parallel if (threaded(B, H))
  {
    alignas(64) float buf[BW_MR * BW_NV * VL];
    // dz of the last step; then per step t: dh_{t-1} = (dz_t W_h^T) * mask for rows inside their
    // sequence (a frozen step passes dh through), and at once the dz of step t - 1, panel by panel
#pragma omp for schedule(static)
    for (int64_t p = 0; p < P; ++p) {
      const int64_t k0 = p * BW_U, kn = std::min<int64_t>(BW_U, H - k0);
      for (int64_t b = 0; b < B; ++b) gate_grads(d, d.t - 1, b, k0, kn, acts, cs, c0, lengths, dys, dh, dc, dz);
    }
    for (int64_t t = d.t - 1; t >= 0; --t) {
      const float* dz_t = dz + t * B * G;
#pragma omp for schedule(static)
      for (int64_t p = 0; p < P; ++p) {
        const int64_t k0 = p * BW_U, kn = std::min<int64_t>(BW_U, H - k0);
        for (int64_t r0 = 0; r0 < B; r0 += BW_MR) {
          const int mr = static_cast<int>(std::min<int64_t>(BW_MR, B - r0));
          micro_rows<BW_NV, BW_MR>(mr, dz_t + r0 * G, G, packed.p + p * G * BW_U, G, buf);
          for (int r = 0; r < mr; ++r) {
            const int64_t b = r0 + r;
            if (t < lengths[b]) {
              const float* back = buf + r * BW_U;
              for (int64_t j = 0; j < kn; ++j) dh[b * H + k0 + j] = back[j] * mask[b * H + k0 + j];
            }
            if (t > 0) gate_grads(d, t - 1, b, k0, kn, acts, cs, c0, lengths, dys, dh, dc, dz);
          }
        }
      }  // implicit barrier: step t - 1's GEMM reads every panel's units of dz_{t-1}
    }
  }
}

ffi::Error Forward(ffi::Buffer<ffi::F32> zx, ffi::Buffer<ffi::F32> w_h, ffi::Buffer<ffi::F32> h0,
                   ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::S32> lengths, ffi::Buffer<ffi::F32> mask,
                   ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> h_T, ffi::ResultBuffer<ffi::F32> c_T,
                   float* acts, float* cs) {
  Dims d;
  if (auto e = get_dims(zx, w_h, &d); e.failure()) return e;
  const int64_t B = d.b, H = d.h, G = 4 * d.h, T = d.t;
#pragma omp parallel for schedule(static) if (d.members > 1)
  for (int64_t m = 0; m < d.members; ++m) {
    forward_one(d, zx.typed_data() + m * T * B * G, w_h.typed_data() + m * H * G, h0.typed_data() + m * B * H,
                c0.typed_data() + m * B * H, lengths.typed_data() + m * B, mask.typed_data() + m * B * H,
                ys->typed_data() + m * T * B * H, h_T->typed_data() + m * B * H, c_T->typed_data() + m * B * H,
                acts ? acts + m * T * B * G : nullptr, cs ? cs + m * T * B * H : nullptr);
  }
  return ffi::Error::Success();
}
ffi::Error ForwardInfer(ffi::Buffer<ffi::F32> zx, ffi::Buffer<ffi::F32> w_h, ffi::Buffer<ffi::F32> h0,
                        ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::S32> lengths, ffi::Buffer<ffi::F32> mask,
                        ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> h_T,
                        ffi::ResultBuffer<ffi::F32> c_T) {
  return Forward(zx, w_h, h0, c0, lengths, mask, ys, h_T, c_T, nullptr, nullptr);
}

ffi::Error ForwardTrain(ffi::Buffer<ffi::F32> zx, ffi::Buffer<ffi::F32> w_h, ffi::Buffer<ffi::F32> h0,
                        ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::S32> lengths, ffi::Buffer<ffi::F32> mask,
                        ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> h_T,
                        ffi::ResultBuffer<ffi::F32> c_T, ffi::ResultBuffer<ffi::F32> acts,
                        ffi::ResultBuffer<ffi::F32> cs) {
  return Forward(zx, w_h, h0, c0, lengths, mask, ys, h_T, c_T, acts->typed_data(), cs->typed_data());
}

ffi::Error Backward(ffi::Buffer<ffi::F32> w_h, ffi::Buffer<ffi::F32> acts, ffi::Buffer<ffi::F32> cs,
                    ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::S32> lengths, ffi::Buffer<ffi::F32> mask,
                    ffi::Buffer<ffi::F32> dys, ffi::Buffer<ffi::F32> dh_T, ffi::Buffer<ffi::F32> dc_T,
                    ffi::ResultBuffer<ffi::F32> dz, ffi::ResultBuffer<ffi::F32> dh0, ffi::ResultBuffer<ffi::F32> dc0) {
  Dims d;
  if (auto e = get_dims(acts, w_h, &d); e.failure()) return e;
  const int64_t B = d.b, H = d.h, G = 4 * d.h, T = d.t;
#pragma omp parallel for schedule(static) if (d.members > 1)
  for (int64_t m = 0; m < d.members; ++m) {
    backward_one(d, w_h.typed_data() + m * H * G, acts.typed_data() + m * T * B * G, cs.typed_data() + m * T * B * H,
                 c0.typed_data() + m * B * H, lengths.typed_data() + m * B, mask.typed_data() + m * B * H,
                 dys.typed_data() + m * T * B * H, dh_T.typed_data() + m * B * H, dc_T.typed_data() + m * B * H,
                 dz->typed_data() + m * T * B * G, dh0->typed_data() + m * B * H, dc0->typed_data() + m * B * H);
  }
  return ffi::Error::Success();
}

}  // namespace

#define LSTM_CPU_FORWARD_ARGS                                                                            \
  ffi::Ffi::Bind()                                                                                       \
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
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmCpuBackward, Backward,
                              ffi::Ffi::Bind()
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
