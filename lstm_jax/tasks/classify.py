"""Sequence classification: a stratified validation split, the loss, training with
``lstm_jax.train.fit``, batched prediction, a confusion matrix, and
``classifier_experiment``, the part every classification script shares (train, predict,
report the test and validation accuracy).

Shapes: ``N`` examples, ``t`` steps, ``d`` features (or ``[N, t]`` token ids), ``C`` classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Optional

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
from lstm_jax.typing import Array, PRNGKey, PyTree

__all__ = [
    "stratified_split",
    "make_classifier_loss",
    "AUGMENTATIONS",
    "augment_inputs",
    "updates_per_epoch",
    "ClassifierRun",
    "train_classifier",
    "best_history_value",
    "predict_proba",
    "predict_classes",
    "add_baseline",
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


AUGMENTATIONS = ("none", "shift", "jitter")


def augment_inputs(x: Array, key: PRNGKey, kind: str, *, max_shift: int = 2) -> Array:
    """Random training-time input augmentation of a batch ``x: [b, t, d]``.

    ``"shift"`` (images read as rows): every example moved by up to ``max_shift`` steps and
    features (zero fill), the small translations image practitioners use; ``"jitter"``
    (sensor series, standardised channels): every channel scaled by ``N(1, 0.1)`` and Gaussian
    noise of sd 0.05 added; ``"none"``: ``x`` unchanged.
    """
    if kind == "none":
        return x
    b, t, d = x.shape
    if kind == "shift":
        m = max_shift
        shifts = jax.random.randint(key, (b, 2), 0, 2 * m + 1)
        padded = jnp.pad(x, ((0, 0), (m, m), (m, m)))
        return jax.vmap(lambda xi, s: jax.lax.dynamic_slice(xi, (s[0], s[1]), (t, d)))(padded, shifts)
    if kind == "jitter":
        k_scale, k_noise = jax.random.split(key)
        scale = 1.0 + 0.1 * jax.random.normal(k_scale, (b, 1, d), x.dtype)
        return x * scale + 0.05 * jax.random.normal(k_noise, x.shape, x.dtype)
    raise ValueError(f"expected augment in {AUGMENTATIONS}, got {kind!r}")


def make_classifier_loss(
    *,
    readout: str = "final",
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    label_smoothing: float = 0.0,
    augment: str = "none",
    impl: str = "auto",
) -> Callable:
    """``loss_fn(params: SeqModel, batch, rng)`` for sequence classification with ``lstm_jax.train.fit``.

    ``batch``: ``{"x": [b, t, d] or [b, t] ids, "y": [b] int, "lengths": [b] (optional)}``.
    Loss: softmax cross-entropy (optionally label-smoothed); metric ``accuracy``. Dropout and
    ``augment`` (``augment_inputs``, float inputs only) only when ``rng`` is given (training).
    ``impl``: the layer backend (``lstm_jax.backends``).
    """
    from lstm_jax import losses

    if augment not in AUGMENTATIONS:
        raise ValueError(f"expected augment in {AUGMENTATIONS}, got {augment!r}")

    def loss_fn(params, batch, rng):
        rng = None if rng is None else as_key(rng, "rng")
        x = batch["x"]
        if rng is not None and augment != "none":
            rng, k_aug = jax.random.split(rng)
            x = augment_inputs(x, k_aug, augment)
        logits = apply_seq_model(
            params,
            x,
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


def updates_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimiser updates per epoch of ``train_classifier`` on ``n_train`` examples: full batches
    of ``min(batch_size, n_train)``."""
    return n_train // min(batch_size, n_train)


class ClassifierRun(NamedTuple):
    """What ``train_classifier`` returns."""

    params: PyTree  # best-on-monitor params; with several seeds stacked on a leading [E] axis
    seeds: tuple  # the seeds trained (E of them)
    step: int  # optimiser updates per member
    best_epoch: list  # per seed (1-based)
    histories: list  # per seed: one record per epoch (epoch, train_*, val_*)


def train_classifier(
    train_set: dict,
    val_set: dict,
    *,
    cell: str,
    input_size: int,
    hidden: int,
    n_classes: int,
    epochs: int,
    seeds: Sequence[int] = (0,),
    batch_size: int = 32,
    lr: float = 2e-3,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    readout: str = "final",
    bidirectional: bool = False,
    vocab_size: Optional[int] = None,
    embed_init: Optional[np.ndarray] = None,
    weight_decay: float = 0.0,
    augment: str = "none",
    monitor: str = "val_loss",
    impl: str = "auto",
    progress: bool = True,
    desc: str = "",
) -> ClassifierRun:
    """Train ``SeqModel`` classifiers, one per seed (Adam with warmup + cosine decay, gradient
    clipping 1.0, the best epoch on ``monitor`` kept) and return a ``ClassifierRun``.

    One seed: ``lstm_jax.train.fit`` with compiled epochs and a progress bar. Several seeds:
    ONE program, ``jax.vmap`` of ``lstm_jax.train.make_train`` over the seeds' keys, whose
    member ``k`` is the same run as the one-seed call with ``seeds=(seeds[k],)`` (init and
    training keys from ``split_run_key(jax.random.key(seed))`` either way).

    ``train_set``/``val_set``: ``{"x": [N, t, d] floats or [N, t] ids, "y": [N], "lengths": [N]?}``.
    ``embed_init`` (``[vocab_size, input_size]``) replaces the random embedding.
    """
    from lstm_jax import train as train_lib

    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("expected at least one seed, got none")

    def init_fn(key):
        params = init_seq_model(
            key,
            cell=cell,
            input_size=input_size,
            hidden_size=hidden,
            output_size=n_classes,
            bidirectional=bidirectional,
            vocab_size=vocab_size,
        )
        if embed_init is not None:
            params = params._replace(embed=jnp.asarray(embed_init, jnp.float32))
        return params

    loss_fn = make_classifier_loss(
        readout=readout, dropout=dropout, recurrent_dropout=recurrent_dropout, augment=augment, impl=impl
    )
    per_epoch = updates_per_epoch(len(train_set["y"]), batch_size)
    batch_size = min(batch_size, len(train_set["y"]))
    config = train_lib.TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        clip_norm=1.0,
        warmup_steps=min(100, epochs * per_epoch // 10),
        cosine_decay=True,
        weight_decay=weight_decay,
        monitor=monitor,
        mode="max" if monitor.endswith("accuracy") else "min",
    )
    if len(seeds) == 1:
        init_key, fit_key = train_lib.split_run_key(jax.random.key(seeds[0]))
        result = train_lib.fit(
            loss_fn,
            jax.jit(init_fn)(init_key),
            config.make_optimizer(per_epoch),
            train_set,
            val_data=val_set,
            epochs=epochs,
            batch_size=batch_size,
            seed=fit_key,
            monitor=config.monitor,
            mode=config.mode,
            compiled_epoch=True,
            on_nonfinite="skip",
            progress=progress,
            desc=desc,
        )
        return ClassifierRun(result.params, seeds, int(result.state.step), [result.best_epoch], [result.history])
    if progress:
        print(f"{desc}: {len(seeds)} seeds as one vmapped program (train.make_train), {epochs} epochs", flush=True)
    train = train_lib.make_train(config, loss_fn, init_fn, train_set, val_set)
    out = jax.jit(jax.vmap(train))(jnp.stack([jax.random.key(s) for s in seeds]))
    histories = [_history_records(out.history, k) for k in range(len(seeds))]
    return ClassifierRun(out.params, seeds, epochs * per_epoch, [int(b) for b in np.asarray(out.best_epoch)], histories)


def _history_records(history: dict, member: int) -> list:
    """Member ``member``'s ``make_train`` history (name -> [E, epochs]) as ``fit``'s records."""
    arrays = {k: np.asarray(v)[member] for k, v in history.items()}
    active = arrays.pop("active")
    return [{"epoch": e + 1, **{k: float(v[e]) for k, v in arrays.items()}} for e in range(len(active)) if active[e]]


def best_history_value(history: list, best_epoch: int, key: str) -> float:
    """``key`` (e.g. ``"val_accuracy"``) of ``history`` (records with ``epoch``) at ``best_epoch``
    (the last evaluated epoch when ``best_epoch`` was never evaluated)."""
    evaluated = [h for h in history if key in h]
    by_epoch = {h["epoch"]: h[key] for h in evaluated}
    return float(by_epoch.get(best_epoch, evaluated[-1][key]))


def predict_proba(
    params: SeqModel, data: dict, *, readout: str = "final", members: bool = False, batch_size: int = 256
) -> np.ndarray:
    """Class probabilities of every example of ``data`` (``{"x", "lengths"?}``): ``[N, C]``, or
    ``[N, E, C]`` for params stacked over ``E`` members (``members=True``). Jitted, batched."""
    key = (readout, members)
    if key not in _PREDICT_CACHE:

        def probs(p, b):
            return jax.nn.softmax(apply_seq_model(p, b["x"], lengths=b.get("lengths"), readout=readout), axis=-1)

        fn = (lambda p, b: jnp.moveaxis(jax.vmap(probs, in_axes=(0, None))(p, b), 0, 1)) if members else probs
        _PREDICT_CACHE[key] = jax.jit(fn)
    inputs = {k: v for k, v in data.items() if k in ("x", "lengths")}
    return predict_batched(_PREDICT_CACHE[key], params, inputs, batch_size=batch_size)


def predict_classes(params: SeqModel, data: dict, *, readout: str = "final", batch_size: int = 256) -> np.ndarray:
    """Arg-max class of every example of ``data`` (``{"x", "lengths"?}``) -> ``[N]`` ints (jitted, batched)."""
    return np.argmax(predict_proba(params, data, readout=readout, batch_size=batch_size), axis=-1)


_PREDICT_CACHE: dict = {}


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """``[C, C]`` counts, rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(preds)), 1)
    return cm


def accuracy(preds, labels) -> float:
    """Fraction of ``preds [N]`` equal to ``labels [N]``."""
    return float(np.mean(np.asarray(preds) == np.asarray(labels)))


def add_baseline(res: Results, dataset: str, name: str, preds, labels) -> float:
    """A baseline's test accuracy row and its per-example correctness (for the comparisons)."""
    correct = np.asarray(preds) == np.asarray(labels)
    res.add(dataset, name, "accuracy", "test", float(correct.mean()))
    res.add_examples(dataset, name, "accuracy", "test", correct, baseline=True)
    return float(correct.mean())


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
    seeds: Sequence[int] = (0,),
    **train_kwargs,
) -> tuple:
    """Train classifiers (``train_classifier(..., seeds=seeds, **train_kwargs)``), predict
    ``test_set`` and add rows to ``res``: test accuracy, and validation accuracy and
    cross-entropy at the best epoch, per seed (with ``seed`` when there are several) with their per-example correctness;
    with several seeds also ``<cell>_ensemble`` (the members' probabilities averaged). ``res.extra``
    gets ``best_epoch`` and ``history`` (the first seed's). Returns ``(ClassifierRun, test
    predictions [N])`` (the ensemble's with several seeds)."""
    run = train_classifier(
        train_set, val_set, cell=cell, readout=readout, bidirectional=bidirectional, seeds=seeds, **train_kwargs
    )
    y = np.asarray(test_set["y"])
    many = len(run.seeds) > 1
    probs = predict_proba(run.params, test_set, readout=readout, members=many)  # [N, C] or [N, E, C]
    probs = probs if many else probs[:, None]
    for k, seed in enumerate(run.seeds):
        tag = {"seed": seed} if many else {}
        correct = np.argmax(probs[:, k], axis=-1) == y
        res.add(dataset, cell, "accuracy", "test", float(correct.mean()), bidirectional=bidirectional, **tag)
        res.add_examples(dataset, cell, "accuracy", "test", correct, baseline=False, seed=seed if many else None)
        for metric, key in (("accuracy", "val_accuracy"), ("cross_entropy", "val_loss")):
            res.add(dataset, cell, metric, "val", best_history_value(run.histories[k], run.best_epoch[k], key), **tag)
    preds = np.argmax(probs.mean(axis=1), axis=-1)
    if many:
        name = f"{cell}_ensemble"
        res.add(dataset, name, "accuracy", "test", float(np.mean(preds == y)), members=len(run.seeds))
        res.add_examples(dataset, name, "accuracy", "test", preds == y, baseline=False)
    res.extra.update(best_epoch=run.best_epoch if many else run.best_epoch[0], history=run.histories[0])
    return run, preds
