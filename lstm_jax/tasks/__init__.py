"""Recipes of the ``experiments/`` scripts, one module per application plus small shared ones.

Every script follows the same line: parse flags (``cli``) -> load data (``lstm_jax.datasets``)
-> baselines (``lstm_jax.baselines``) -> a recipe of its application -> ``results.finish``
(``metrics.json``, a PNG, a checkpoint).

Shared:
  cli       the common flags, ``make_main`` / ``run_main`` (one-line errors, exit code 2),
            ``fast_compile``, progress bars, ``Timer``
  results   ``Results`` (``metrics.json``), markdown tables, checkpoints, figures, ``finish``
  compare   tables across runs (``summarize_runs``, ``cells_markdown``)
  seqmodel  ``SeqModel``: a recurrent stack with a linear head; batched prediction; ensembles
  loops     step-budgeted training loops (``train_steps``, ``train_generated``)

Applications:
  forecast  next-day forecasting of a daily table with an ensemble (weather_forecast.py)
  probabilistic  multi-horizon forecasts with a likelihood: Gaussian, Student-t, quantiles (weather_forecast.py)
  anomaly   LSTM forecast-residual and autoencoder anomaly detectors, baselines (anomaly.py)
  stocks    next-day log returns against the random walk (stocks.py)
  classify  sequence classification (handwriting.py, speaker_id.py, sentiment.py)
  text      tokenisation, word vocabularies, PPMI-SVD word vectors (sentiment.py)
  char_lm   character language models with truncated BPTT (char_lm.py)
  translate machine translation: subwords, IBM Model 1 and copy baselines, BLEU/chrF (translate.py)
  bible     the verse-aligned KJV / Reina-Valera Bible from Debian's SWORD packages (translate.py)
  speech    speech recognition with CTC: manifests, splits, feature cache, baselines (speech_ctc.py);
            speech_train (training and decoding loops), fillets (the Fish Fillets NG dialogs)
  music     Bach chorales: piano rolls, next-frame model, baselines, MIDI (music.py)

Use the modules by name: ``from lstm_jax.tasks import forecast; forecast.forecast_data(...)``.
"""

from lstm_jax.tasks import (
    anomaly,
    bible,
    char_lm,
    classify,
    cli,
    compare,
    forecast,
    loops,
    music,
    probabilistic,
    results,
    seqmodel,
    stocks,
    text,
    translate,
)

__all__ = [
    "anomaly",
    "bible",
    "char_lm",
    "classify",
    "cli",
    "compare",
    "forecast",
    "loops",
    "music",
    "probabilistic",
    "results",
    "seqmodel",
    "stocks",
    "text",
    "translate",
]
