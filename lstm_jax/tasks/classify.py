"""Sequence classification: a stratified validation split, the loss, training with
``lstm_jax.train.fit``, batched prediction, a confusion matrix, and
``classifier_experiment``, the part every classification script shares (train, predict,
report the test and validation accuracy).

Shapes: ``N`` examples, ``t`` steps, ``d`` features (or ``[N, t]`` token ids), ``C`` classes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.keys import as_key
from lstm_jax.tasks.results import Results
from lstm_jax.tasks.seqmodel import (
    SeqModel,
    apply_seq_model,
    init_seq_model,
    predict_batched,
)

__all__ = [
    "stratified_split",
    "make_classifier_loss",
    "train_classifier",
    "best_history_value",
    "predict_classes",
    "confusion_matrix",
    "accuracy",
    "classifier_experiment",
]


def stratified_split(labels: np.ndarray, fraction: float, *, seed: int = 0) -> tuple:
    """Split indices ``0..n-1`` into ``(keep, held_out)`` with ~``fraction`` of every class held out.

    Every class with at least two examples keeps at least one and holds out at least one.
    """
    labels = np.asarray(labels)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"expected 0 < fraction < 1, got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        held.append(idx[:k])
    held = np.sort(np.concatenate(held))  # type: ignore[assignment]
    keep = np.setdiff1d(np.arange(len(labels)), held)
    return keep, held


def make_classifier_loss(
    *,
    readout: str = "final",
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    label_smoothing: float = 0.0,
    impl: str = "auto",
) -> Callable:
    """``loss_fn(params: SeqModel, batch, rng)`` for sequence classification with ``lstm_jax.train.fit``.

    ``batch``: ``{"x": [b, t, d] or [b, t] ids, "y": [b] int, "lengths": [b] (optional)}``.
    Loss: softmax cross-entropy (optionally label-smoothed); metric ``accuracy``. Dropout only
    when ``rng`` is given (training). ``impl``: the layer backend (``lstm_jax.backends``).
    """
    from lstm_jax import losses

    def loss_fn(params, batch, rng):
        rng = None if rng is None else as_key(rng, "rng")
        logits = apply_seq_model(
            params,
            batch["x"],
            lengths=batch.get("lengths"),
            readout=readout,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            dropout_key=rng,
            impl=impl,
        )
        if label_smoothing and rng is not None:
            k = logits.shape[-1]
            target = jax.nn.one_hot(batch["y"], k) * (1.0 - label_smoothing) + label_smoothing / k
            loss = -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits), axis=-1))
        else:
            loss = losses.classification_loss(logits, batch["y"])
        return loss, {"accuracy": losses.accuracy(logits, batch["y"])}

    return loss_fn


def train_classifier(
    train_set: dict,
    val_set: dict,
    *,
    cell: str,
    input_size: int,
    hidden: int,
    n_classes: int,
    epochs: int,
    batch_size: int = 32,
    lr: float = 2e-3,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    readout: str = "final",
    bidirectional: bool = False,
    vocab_size: Optional[int] = None,
    embed_init: Optional[np.ndarray] = None,
    weight_decay: float = 0.0,
    monitor: str = "val_loss",
    seed: int = 0,
    impl: str = "auto",
    progress: bool = True,
    desc: str = "",
):
    """Train a ``SeqModel`` classifier with ``lstm_jax.train.fit`` (compiled epochs, Adam with
    warmup + cosine decay, gradient clipping 1.0) and return the ``FitResult`` (best-on-``monitor`` params).

    ``train_set``/``val_set``: ``{"x": [N, t, d] floats or [N, t] ids, "y": [N], "lengths": [N]?}``.
    ``embed_init`` (``[vocab_size, input_size]``) replaces the random embedding.
    """
    from lstm_jax import train as train_lib

    init = partial(
        init_seq_model,
        cell=cell,
        input_size=input_size,
        hidden_size=hidden,
        output_size=n_classes,
        bidirectional=bidirectional,
        vocab_size=vocab_size,
    )
    params = jax.jit(init)(jax.random.key(seed))
    if embed_init is not None:
        params = params._replace(embed=jnp.asarray(embed_init, jnp.float32))
    loss_fn = make_classifier_loss(readout=readout, dropout=dropout, recurrent_dropout=recurrent_dropout, impl=impl)
    batch_size = min(batch_size, len(train_set["y"]))
    steps = epochs * (len(train_set["y"]) // batch_size)
    optimizer = train_lib.make_optimizer(
        lr, clip_norm=1.0, warmup_steps=min(100, steps // 10), total_steps=steps, weight_decay=weight_decay
    )
    mode = "max" if monitor.endswith("accuracy") else "min"
    return train_lib.fit(
        loss_fn,
        params,
        optimizer,
        train_set,
        val_data=val_set,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        monitor=monitor,
        mode=mode,
        compiled_epoch=True,
        progress=progress,
        desc=desc,
    )


def best_history_value(result, key: str) -> float:
    """``key`` (e.g. ``"val_accuracy"``) at the best epoch of a ``FitResult`` (last epoch if none)."""
    evaluated = [h for h in result.history if key in h]
    by_epoch = {h["epoch"]: h[key] for h in evaluated}
    return float(by_epoch.get(result.best_epoch, evaluated[-1][key]))


def predict_classes(params: SeqModel, data: dict, *, readout: str = "final", batch_size: int = 256) -> np.ndarray:
    """Arg-max class of every example of ``data`` (``{"x", "lengths"?}``) -> ``[N]`` ints (jitted, batched)."""
    fn = _predict_fn(readout)
    inputs = {k: v for k, v in data.items() if k in ("x", "lengths")}
    return predict_batched(fn, params, inputs, batch_size=batch_size)


_PREDICT_CACHE: dict = {}


def _predict_fn(readout: str) -> Callable:
    if readout not in _PREDICT_CACHE:
        _PREDICT_CACHE[readout] = jax.jit(
            lambda p, b: jnp.argmax(apply_seq_model(p, b["x"], lengths=b.get("lengths"), readout=readout), axis=-1)
        )
    return _PREDICT_CACHE[readout]


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """``[C, C]`` counts, rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(preds)), 1)
    return cm


def accuracy(preds, labels) -> float:
    """Fraction of ``preds [N]`` equal to ``labels [N]``."""
    return float(np.mean(np.asarray(preds) == np.asarray(labels)))


def classifier_experiment(
    res: Results,
    dataset: str,
    train_set: dict,
    val_set: dict,
    test_set: dict,
    *,
    cell: str,
    readout: str = "final",
    bidirectional: bool = False,
    **train_kwargs,
) -> tuple:
    """Train a classifier (``train_classifier(train_set, val_set, cell=cell, readout=readout,
    bidirectional=bidirectional, **train_kwargs)``), predict ``test_set`` and add two rows to
    ``res``: test accuracy and the validation accuracy at the best epoch; ``res.extra`` gets
    ``best_epoch`` and ``history``. Returns ``(FitResult, test predictions [N])``."""
    result = train_classifier(
        train_set, val_set, cell=cell, readout=readout, bidirectional=bidirectional, **train_kwargs
    )
    preds = predict_classes(result.params, test_set, readout=readout)
    res.add(dataset, cell, "accuracy", "test", accuracy(preds, test_set["y"]), bidirectional=bidirectional)
    res.add(dataset, cell, "accuracy", "val", best_history_value(result, "val_accuracy"))
    res.extra.update(best_epoch=result.best_epoch, history=result.history)
    return result, preds
