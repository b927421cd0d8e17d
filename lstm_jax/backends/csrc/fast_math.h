// lstm_jax CPU kernel: the gate nonlinearities as branch-free float functions that vectorise.
#pragma once

#include <algorithm>

namespace lstm_jax_cpu {

// tanh as a clamped rational function x P(x^2) / Q(x^2) (the minimax form XLA and Eigen use; max
// abs error 4e-7 against double tanh over the floats): branch-free, so each gate loop vectorises
// without a call to a vector math library.
inline float tanh_f(float x) {
  constexpr float kClamp = 7.90531110763549805f;  // beyond it tanh rounds to +-1 in float
  x = std::min(kClamp, std::max(-kClamp, x));
  const float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 - 8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return x * p / q;
}

inline float sigmoid(float x) { return 0.5f * tanh_f(0.5f * x) + 0.5f; }

}  // namespace lstm_jax_cpu
