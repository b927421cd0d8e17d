"""The contenders of the benchmark suite: one builder per library.

A builder ``build_<peer>(kind, cfg, jit)`` returns ``{"fwd": fn, "train": fn}`` where each
``fn()`` runs one forward pass / one training step (value and gradient of a mean-squared
loss of the layer's outputs against a fixed target, then an Adam update) and blocks until
the result is ready. ``kind`` is ``"lstm"`` or ``"gru"``; ``cfg`` is ``(B, T, D, H)``;
``jit`` is ``jax.jit`` (possibly with compiler options, e.g. in ``--quick`` mode). The
builders compile (and run once) before returning, so the timed calls are steady-state.

Peers: ``torch.nn.LSTM/GRU`` (oneDNN, ``torch.set_num_threads`` set by the caller), flax
linen ``nn.RNN(nn.OptimizedLSTMCell / nn.GRUCell)``, flax NNX ``nnx.RNN`` (pure
``jax.jit`` over ``nnx.split`` state, so no per-call graph traversal is timed), equinox
``LSTMCell/GRUCell`` under ``lax.scan`` + ``jax.vmap``, and lstm_jax (default ``lstm()`` /
``gru()`` and ``impl="fused"``). Missing optional packages raise ``ImportError`` from the
builder; ``run.py`` prints a note and skips that peer.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

LR = 1e-3


def _data(cfg, seed=0):
    b, t, d, h = cfg
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((b, t, d)).astype(np.float32)
    target = rng.standard_normal((b, t, h)).astype(np.float32) * 0.1
    return xs, target


def _jax_fns(apply, params, cfg, jit):
    """``apply(params, xs) -> ys [b, t, h]``: forward and Adam train step, compiled and warmed."""
    xs, target = (jnp.asarray(a) for a in _data(cfg))
    opt = optax.adam(LR)
    opt_state = jit(opt.init)(params)  # one compile instead of one per eager op

    fwd = jit(apply)

    def train_step(params, opt_state, xs, target):
        def loss(p):
            return jnp.mean((apply(p, xs) - target) ** 2)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    train = jit(train_step)
    jax.block_until_ready(fwd(params, xs))
    jax.block_until_ready(train(params, opt_state, xs, target))
    # the same params every call: the timed work does not change between repetitions
    return {
        "fwd": lambda: jax.block_until_ready(fwd(params, xs)),
        "train": lambda: jax.block_until_ready(train(params, opt_state, xs, target)),
    }


# --------------------------------------------------------------------------- lstm_jax
def build_ours(kind, cfg, jit, **kw):
    """lstm_jax's batched entry point; ``kw`` goes to ``lstm()/gru()`` (e.g. ``impl``, ``unroll``)."""
    import lstm_jax

    b, t, d, h = cfg
    key = jax.random.key(0)
    init, layer = (lstm_jax.init_lstm, lstm_jax.lstm) if kind == "lstm" else (lstm_jax.init_gru, lstm_jax.gru)
    params = jit(partial(init, input_size=d, hidden_size=h))(key)
    return _jax_fns(lambda p, xs: layer(p, xs, **kw)[0], params, cfg, jit)


# --------------------------------------------------------------------------- flax linen
def build_flax_linen(kind, cfg, jit):
    from flax import linen as nn

    b, t, d, h = cfg
    cell = nn.OptimizedLSTMCell(h) if kind == "lstm" else nn.GRUCell(h)
    model = nn.RNN(cell)
    xs, _ = _data(cfg)
    params = jit(model.init)(jax.random.key(0), jnp.asarray(xs))
    return _jax_fns(model.apply, params, cfg, jit)


# --------------------------------------------------------------------------- flax nnx
def build_flax_nnx(kind, cfg, jit):
    from flax import nnx

    b, t, d, h = cfg

    @nnx.jit
    def create():
        rngs = nnx.Rngs(0)
        cell = nnx.OptimizedLSTMCell(d, h, rngs=rngs) if kind == "lstm" else nnx.GRUCell(d, h, rngs=rngs)
        return nnx.RNN(cell)

    graphdef, params, rest = nnx.split(create(), nnx.Param, ...)

    def apply(params, xs):
        zeros = jnp.zeros((xs.shape[0], h), xs.dtype)
        carry = (zeros, zeros) if kind == "lstm" else zeros  # explicit: no RNG state in the jitted step
        return nnx.merge(graphdef, params, rest)(xs, initial_carry=carry)

    return _jax_fns(apply, params, cfg, jit)


# --------------------------------------------------------------------------- equinox
def build_equinox(kind, cfg, jit):
    import equinox as eqx

    b, t, d, h = cfg
    make = eqx.nn.LSTMCell if kind == "lstm" else eqx.nn.GRUCell
    cell = eqx.filter_jit(lambda key: make(d, h, key=key))(jax.random.key(0))
    params, static = eqx.partition(cell, eqx.is_array)

    def one(params, xs):  # xs: [t, d] -> ys: [t, h]
        cell = eqx.combine(params, static)
        if kind == "lstm":
            init = (jnp.zeros(h), jnp.zeros(h))

            def step(carry, x):
                carry = cell(x, carry)
                return carry, carry[0]
        else:
            init = jnp.zeros(h)

            def step(carry, x):
                carry = cell(x, carry)
                return carry, carry

        return jax.lax.scan(step, init, xs)[1]

    def apply(params, xs):
        return jax.vmap(partial(one, params))(xs)

    return _jax_fns(apply, params, cfg, jit)


# --------------------------------------------------------------------------- torch
def build_torch(kind, cfg, jit=None, layers: int = 1):
    import torch

    b, t, d, h = cfg
    torch.manual_seed(0)
    layer = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(d, h, num_layers=layers, batch_first=True)
    xs_np, target_np = _data(cfg)
    xs, target = torch.from_numpy(xs_np), torch.from_numpy(target_np)
    opt = torch.optim.Adam(layer.parameters(), lr=LR)

    def fwd():
        with torch.inference_mode():
            return layer(xs)[0]

    def train():
        opt.zero_grad(set_to_none=True)
        loss = torch.mean((layer(xs)[0] - target) ** 2)
        loss.backward()
        opt.step()
        return loss.item()

    fwd()
    train()
    return {"fwd": fwd, "train": train}


BUILDERS = {
    "torch": build_torch,
    "flax_linen": build_flax_linen,
    "flax_nnx": build_flax_nnx,
    "equinox": build_equinox,
}
