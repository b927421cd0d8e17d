"""Speech recognition pieces: acoustic features, CTC loss and decoding, a character n-gram
language model for shallow fusion, error rates, and the CTC acoustic model.

* ``features``: log-mel spectrograms, their temporal high-pass, normalisation, frame stacking,
  SpecAugment masking;
* ``ctc``: ``optax.ctc_loss`` masked by lengths, greedy decoding, prefix beam search;
* ``lm``: ``CharNgramLM``, interpolated Witten-Bell character n-grams;
* ``metrics``: edit distance, CER, WER;
* ``model``: the bidirectional (LSTMP) acoustic model, its CTC training loss, and
  ``map_classes`` (start from a model of another vocabulary).

The recipe of ``experiments/speech_ctc.py`` (corpora, splits, caching, bucketing, training)
lives in ``lstm_jax.tasks.speech`` and ``lstm_jax.tasks.speech_train``.
"""

from lstm_jax.speech import ctc, features, lm, metrics, model

__all__ = ["ctc", "features", "lm", "metrics", "model"]
