"""lstm_jax.seq2seq: attention, the decoder step, the teacher-forced likelihood, greedy and
beam search. Oracles: Python loops over ``decoder_step``, brute-force enumeration of every
output sequence, decoding each unpadded source alone, and the attention formulas in numpy."""

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import seq2seq as S
from lstm_jax.tasks import cli

PAD, BOS, EOS = 0, 1, 2
BANNED = (PAD, BOS)


@pytest.fixture(autouse=True)
def _fast_compile():
    with cli.fast_compile():
        yield


def _model(
    attention="general",
    bidirectional=True,
    input_feeding=True,
    v_src=9,
    v_tgt=8,
    hidden=8,
    seed=0,
    eos_bias=1.0,
    scale=3.0,
):
    p = S.init_seq2seq(
        jax.random.key(seed),
        v_src,
        v_tgt,
        embed=6,
        hidden=hidden,
        bidirectional=bidirectional,
        attention=attention,
        input_feeding=input_feeding,
    )
    # sharpen the random model and make eos likely enough that lengths vary
    return p._replace(w_out=scale * p.w_out, b_out=p.b_out.at[EOS].set(eos_bias))


def _sources(v_src=9, lengths=(5, 3, 7), width=8, seed=1):
    rng = np.random.default_rng(seed)
    src = rng.integers(3, v_src, (len(lengths), width)).astype(np.int32)  # junk past each length
    return jnp.asarray(src), jnp.asarray(lengths, jnp.int32)


def _encode_one(params, src, n):
    memory, carry, mask = S.encode(params, src[None, :n], jnp.asarray([n], jnp.int32), impl="scan")
    return jax.tree_util.tree_map(lambda a: a[0], (memory, carry, mask))


@jax.jit
def _jit_step_log_probs(params, carry, token, memory, mask):
    carry, logits, _ = S.decoder_step(params, carry, token, memory, mask)
    return carry, jax.nn.log_softmax(logits.at[jnp.asarray(BANNED)].set(-jnp.inf))


def _step_log_probs(params, carry, token, memory, mask):
    """One step of the reference Python loops (jitted once, so the loops stay fast)."""
    carry, lp = _jit_step_log_probs(params, carry, jnp.int32(token), memory, mask)
    return carry, np.asarray(lp)


# --------------------------------------------------------------------------- attention
def test_attention_weights_match_the_formulas_and_ignore_padding():
    rng = np.random.default_rng(0)
    memory = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    query = jnp.asarray(rng.normal(size=(3,)), jnp.float32)
    mask = jnp.asarray([True, True, True, False, False])
    for kind in ("general", "bahdanau"):
        p = S.init_attention(jax.random.key(1), kind, 4, 3, units=6)
        context, w = S.attend(p, query, S.attention_keys(p, memory), memory, mask)
        m, q = np.asarray(memory), np.asarray(query)
        if kind == "general":
            scores = m @ np.asarray(p.w) @ q
        else:
            scores = np.tanh(q @ np.asarray(p.w_q) + m @ np.asarray(p.w_k)) @ np.asarray(p.v)
        e = np.exp(scores[:3] - scores[:3].max())
        expected = np.concatenate([e / e.sum(), [0.0, 0.0]])
        np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(context, expected @ m, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="memory_size == query_size"):
        S.init_attention(jax.random.key(0), "dot", 4, 3)
    with pytest.raises(ValueError, match="attention kind"):
        S.init_attention(jax.random.key(0), "cosine", 4, 4)


# --------------------------------------------------------------------------- teacher forcing
@pytest.mark.parametrize(
    "attention,bidirectional,input_feeding",
    [("general", True, True), ("dot", False, False), ("bahdanau", True, True)],
)
def test_teacher_forced_log_likelihood_equals_a_python_loop_of_steps(attention, bidirectional, input_feeding):
    params = _model(attention, bidirectional, input_feeding)
    src, src_len = _sources()
    rng = np.random.default_rng(2)
    tgt_len = np.array([4, 6, 2], np.int32)
    ref = [rng.integers(3, 8, n - 1) for n in tgt_len]  # reference tokens, then eos
    width = 7
    tgt_in = np.full((3, width), PAD, np.int32)
    tgt_out = np.full((3, width), PAD, np.int32)
    for k, r in enumerate(ref):
        tgt_in[k, : len(r) + 1] = np.concatenate([[BOS], r])
        tgt_out[k, : len(r) + 1] = np.concatenate([r, [EOS]])
    batch = dict(
        src=src, src_len=src_len, tgt_in=jnp.asarray(tgt_in), tgt_out=jnp.asarray(tgt_out), tgt_len=jnp.asarray(tgt_len)
    )
    got = np.asarray(jax.jit(partial(S.sequence_log_prob, impl="scan"))(params, batch))
    for k in range(3):
        memory, carry, mask = _encode_one(params, src[k], int(src_len[k]))
        total, prev = 0.0, BOS
        for y in list(ref[k]) + [EOS]:
            carry, logits, _ = S.decoder_step(params, carry, jnp.int32(prev), memory, mask)
            total += float(jax.nn.log_softmax(logits)[y])
            prev = int(y)
        np.testing.assert_allclose(got[k], total, rtol=1e-4, atol=1e-4)
    # unsmoothed loss = mean negative log-likelihood per target token
    loss, metrics = S.seq2seq_loss(params, batch, None, impl="scan")
    np.testing.assert_allclose(loss, -got.sum() / tgt_len.sum(), rtol=1e-4)
    # label smoothing: (1 - eps) * nll + eps * mean over the vocabulary of -log p, per token
    eps = 0.2
    smooth, _ = S.seq2seq_loss(params, batch, None, label_smoothing=eps, impl="scan")
    logp, tmask = S.target_log_probs(params, batch, impl="scan")
    uniform = -np.asarray(logp).mean(-1)[np.asarray(tmask)].sum() / tgt_len.sum()
    np.testing.assert_allclose(smooth, (1 - eps) * float(metrics["nll"]) + eps * uniform, rtol=1e-4)


def test_bad_inputs_raise_clear_errors():
    params = _model()
    with pytest.raises(ValueError, match=r"src to be an int array \[b, t\]"):
        S.encode(params, jnp.ones((3,), jnp.int32), jnp.ones((3,), jnp.int32))
    with pytest.raises(ValueError, match="src lengths"):
        S.encode(params, jnp.ones((2, 4), jnp.int32), jnp.ones((3,), jnp.int32))
    with pytest.raises(ValueError, match="label_smoothing"):
        batch = dict(src=jnp.ones((1, 2), jnp.int32), src_len=jnp.ones((1,), jnp.int32))
        S.seq2seq_loss(
            params,
            {**batch, "tgt_in": batch["src"], "tgt_out": batch["src"], "tgt_len": batch["src_len"]},
            label_smoothing=1.0,
        )
    with pytest.raises(ValueError, match="beam to be a positive int"):
        S.beam_decode(
            params, jnp.ones((1, 2), jnp.int32), jnp.ones((1,), jnp.int32), beam=0, bos=BOS, eos=EOS, max_len=3
        )


# --------------------------------------------------------------------------- search
def _greedy(params, src, src_len, max_len, **kw):
    fn = partial(S.greedy_decode, bos=BOS, eos=EOS, max_len=max_len, banned=BANNED, impl="scan", **kw)
    return jax.jit(fn)(params, src, src_len)


def _beam(params, src, src_len, max_len, beam, alpha=0.6, **kw):
    fn = partial(
        S.beam_decode, beam=beam, alpha=alpha, bos=BOS, eos=EOS, max_len=max_len, banned=BANNED, impl="scan", **kw
    )
    return jax.jit(fn)(params, src, src_len)


@pytest.mark.parametrize("attention", ["general", "bahdanau"])
def test_beam_size_one_equals_greedy(attention):
    src, src_len = _sources(lengths=(5, 3, 7, 2, 6, 8), seed=4)
    for eos_bias in np.linspace(0.0, 1.2, 13):  # the first bias where both ways of ending occur
        params = _model(attention, eos_bias=float(eos_bias))
        g = _greedy(params, src, src_len, 10, len_ratio=1.0, len_extra=2)
        lengths = np.asarray(g.lengths)
        if len(set(lengths.tolist())) > 1 and (np.asarray(g.tokens) == EOS).any():
            break
    else:
        pytest.fail("expected some outputs ending in eos and some cut at the limit")
    b = _beam(params, src, src_len, 10, beam=1, alpha=0.6, len_ratio=1.0, len_extra=2)
    np.testing.assert_array_equal(b.tokens[:, 0], g.tokens)
    np.testing.assert_array_equal(b.lengths[:, 0], lengths)
    np.testing.assert_allclose(b.log_probs[:, 0], g.log_probs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.attention[:, 0], g.attention, atol=1e-6)
    # greedy really is the step-by-step argmax, stopped by eos or the source-tied limit
    limits = np.minimum(np.asarray(src_len) + 2, 10)
    for k in range(len(lengths)):
        memory, carry, mask = _encode_one(params, src[k], int(src_len[k]))
        prev, seq = BOS, []
        while len(seq) < limits[k]:
            carry, lp = _step_log_probs(params, carry, prev, memory, mask)
            prev = int(np.argmax(lp))
            seq.append(prev)
            if prev == EOS:
                break
        assert lengths[k] == len(seq)
        np.testing.assert_array_equal(np.asarray(g.tokens[k, : len(seq)]), seq)
        assert (np.asarray(g.tokens[k, len(seq) :]) == PAD).all()


def _enumerate_best(params, src, n, max_len, alpha):
    """Score every output sequence (ending in eos, or cut at max_len) with a Python loop."""
    memory, carry0, mask = _encode_one(params, src, n)
    words = [t for t in range(params.w_out.shape[1]) if t not in BANNED]
    best = (-np.inf, None)
    for length in range(1, max_len + 1):
        for seq in itertools.product(words, repeat=length):
            if EOS in seq[:-1] or (length < max_len and seq[-1] != EOS):
                continue
            carry, prev, total = carry0, BOS, 0.0
            for y in seq:
                carry, lp = _step_log_probs(params, carry, prev, memory, mask)
                total += float(lp[y])
                prev = y
            normed = total / ((5.0 + length) / 6.0) ** alpha
            if normed > best[0]:
                best = (normed, seq)
    return best


@pytest.mark.parametrize("max_len,beam", [(2, 6), (3, 12)])
def test_wide_beam_finds_the_exact_best_sequence(max_len, beam):
    # vocabulary of 6 (pad, bos, eos and 3 words); beam 6 = the vocabulary size at length 2,
    # beam 12 at length 3 keeps every prefix: the search is exhaustive, so it must find the argmax
    src, src_len = _sources(lengths=(4, 2, 6), seed=5)
    alpha = 0.6
    for eos_bias in (-1.0, -0.5, -2.0, 0.0):  # the first where not every answer is the bare eos
        params = _model(v_tgt=6, eos_bias=eos_bias, seed=3)
        out = _beam(params, src, src_len, max_len, beam=beam, alpha=alpha, len_ratio=0.0, len_extra=max_len)
        if int(out.lengths[:, 0].max()) > 1:
            break
    for k in range(3):
        score, seq = _enumerate_best(params, src[k], int(src_len[k]), max_len, alpha)
        n = int(out.lengths[k, 0])
        assert tuple(np.asarray(out.tokens[k, 0, :n]).tolist()) == seq
        np.testing.assert_allclose(out.scores[k, 0], score, rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(np.asarray(out.scores[k])) <= 1e-6)  # best first


def test_padded_sources_translate_as_unpadded_ones():
    params = _model(eos_bias=-0.5)
    src, src_len = _sources(lengths=(5, 3, 7), width=8, seed=6)
    wide = jnp.concatenate([src, jnp.full((3, 5), 4, jnp.int32)], axis=1)  # more junk padding
    limits = dict(max_len=9, len_ratio=1.0, len_extra=1)  # limits 6, 4, 8: tied to the true lengths
    for decode in (partial(_greedy, **limits), partial(_beam, beam=3, **limits)):
        batch = decode(params, wide, src_len)
        assert len(set(np.asarray(batch.lengths).reshape(-1).tolist())) > 1
        for k in range(3):
            n = int(src_len[k])
            alone = decode(params, src[k : k + 1, :n], src_len[k : k + 1])
            np.testing.assert_array_equal(batch.tokens[k], alone.tokens[0])
            np.testing.assert_allclose(batch.scores[k], alone.scores[0], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(batch.attention[k][..., :n], alone.attention[0], atol=1e-6)
            assert float(jnp.abs(batch.attention[k][..., n:]).max()) == 0.0


def test_decode_limit_and_length_penalty():
    np.testing.assert_array_equal(S.decode_limit(jnp.asarray([1, 4, 40]), 20, 1.5, 2), [3, 8, 20])
    np.testing.assert_allclose(S.length_penalty(jnp.asarray([1, 7]), 0.6), [1.0, 2.0**0.6], rtol=1e-6)
