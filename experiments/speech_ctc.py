"""Speech recognition with CTC on real recorded speech: log-mel features, a bidirectional LSTM
and greedy / prefix beam search decoding with a character n-gram LM, against trivial baselines.

    python experiments/speech_ctc.py                          # Fish Fillets NG, Czech dialogs
    python experiments/speech_ctc.py --language nl            # the Dutch dialogs
    python experiments/speech_ctc.py --manifest corpus.tsv    # your own: audio<TAB>text[<TAB>speaker[<TAB>split]]
    python experiments/speech_ctc.py --quick --manifest corpus.tsv
    python experiments/speech_ctc.py --language nl --init-from results/speech_ctc   # start from a Czech run
    python experiments/speech_ctc.py --language nl --with-language cs   # train on the Czech dialogs too

Data: Debian ``fillets-ng-data`` + ``fillets-ng-data-cs`` / ``-nl`` (split by game level), or a
TSV manifest of WAV/Ogg/FLAC files (read with ``soundfile``). Features are cached in ``--cache``.
Outputs in ``--out``: ``metrics.json`` (CER/WER per decoder and split), ``speech_ctc.png``
(log-mel, CTC posteriors, decoded text of a test utterance), ``samples.txt``, ``checkpoint/``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax
import numpy as np

from lstm_jax.checkpoint import CheckpointStore
from lstm_jax.datasets import DatasetError
from lstm_jax.speech import metrics as M
from lstm_jax.speech.lm import SMOOTHING, CharNgramLM
from lstm_jax.speech.model import AcousticConfig, init_acoustic_model, map_classes, output_lengths
from lstm_jax.tasks import cli, fillets, results, seqmodel
from lstm_jax.tasks import speech as S
from lstm_jax.tasks import speech_train as ST

_floats = lambda s: [float(x) for x in s.split(",") if x]  # noqa: E731


def parse(argv):
    p = cli.make_parser("speech_ctc", __doc__.splitlines()[0])
    p.add_argument("--language", choices=fillets.LANGUAGES, default="cs", help="Fish Fillets NG dialogs")
    p.add_argument("--manifest", help="TSV: audio path, transcript, optional speaker and split columns")
    p.add_argument(
        "--with-language",
        action="append",
        choices=fillets.LANGUAGES,
        default=[],
        help="also train on these Fish Fillets dialogs (repeatable; their levels in this corpus's dev/test left out)",
    )
    p.add_argument("--cache", default=str(Path("results") / "cache" / "speech_ctc"), help="feature cache folder")
    p.add_argument("--n-mels", type=int, default=40)
    p.add_argument("--fmax", type=float, default=8000.0, help="top of the mel filters in Hz")
    p.add_argument(
        "--highpass-ms",
        type=float,
        default=100.0,
        help="also feed each band minus its moving average over this many ms (0: log-mel only)",
    )
    p.add_argument("--norm", choices=("global", "utterance"), default="global", help="feature normalisation")
    p.add_argument("--stack", type=int, default=3, help="frames stacked and subsampled")
    p.add_argument(
        "--speed-perturb",
        type=_floats,
        default=[],
        help="also train on copies of the training audio played at these speeds, e.g. 0.9,1.1 (default: none)",
    )
    p.add_argument(
        "--init-from",
        help="start from the model of an earlier run (its --out folder): same architecture, head mapped by character",
    )
    p.add_argument("--hidden", type=int, default=256, help="LSTM units per direction")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--proj", type=int, default=0, help="LSTMP projection size (0: plain LSTM)")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument(
        "--freq-width", type=int, default=15, help="SpecAugment: widest of the 2 frequency masks, in feature columns"
    )
    p.add_argument(
        "--mask-bands",
        action="store_true",
        help="a frequency mask hides the same mel bands of the log-mel and of its high-pass (--freq-width in bands)",
    )
    p.add_argument(
        "--compute-dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="LSTM matmul dtype; bfloat16: mixed precision (float32 state and gates)",
    )
    p.add_argument("--updates", type=int, default=4200, help="training budget in updates")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--buckets", type=int, default=8, help="duration buckets (compiled shapes), least padding")
    p.add_argument(
        "--max-train-seconds", type=float, default=15.0, help="longer utterances are not trained on (still evaluated)"
    )
    p.add_argument("--eval-every", type=int, default=700, help="updates between dev greedy CER checks")
    p.add_argument(
        "--ema", type=float, default=0.0, help="decay of a moving average of the weights, checked on dev too (0: off)"
    )
    p.add_argument("--beam", type=int, default=16, help="prefixes kept per frame")
    p.add_argument("--lm-order", type=int, default=5, help="character n-gram order")
    p.add_argument("--lm-smoothing", choices=SMOOTHING, default="kneser_ney", help="n-gram smoothing")
    p.add_argument("--lm-weights", type=_floats, default=[0.3, 0.6, 0.9], help="comma-separated grid, tuned on dev")
    p.add_argument("--bonuses", type=_floats, default=[0.5, 1.0, 1.5, 2.0], help="insertion bonus grid, tuned on dev")
    p.add_argument(
        "--decode-workers", type=int, default=min(os.cpu_count() or 1, 8), help="processes for the beam searches"
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the split of groups (levels)")
    p.add_argument("--samples", type=int, default=25, help="test utterances written to samples.txt")
    args = p.parse_args(argv)
    if any(not 0.5 <= f <= 2.0 or f == 1.0 for f in args.speed_perturb):
        want = "factors in [0.5, 2] other than 1 (the recorded audio is always used)"
        p.error(f"expected --speed-perturb {want}, got {args.speed_perturb}")
    if not args.manifest and args.language in args.with_language:
        p.error(f"expected --with-language other than --language {args.language}, got {args.with_language}")
    if args.init_from and not Path(args.init_from).is_dir():
        p.error(f"expected --init-from to be the --out folder of an earlier run, got {args.init_from!r}")
    if args.highpass_ms < 0 or not args.fmax > 0:
        p.error(f"expected --highpass-ms >= 0 and --fmax > 0, got {args.highpass_ms} and {args.fmax}")
    columns = args.n_mels if args.mask_bands else feature_config(args).n_features
    if not 0 <= args.freq_width <= columns:
        unit = "mel bands" if columns == args.n_mels else "feature columns"
        p.error(f"expected --freq-width in [0, {columns}] ({unit}), got {args.freq_width}")
    if not 0.0 <= args.ema < 1.0:
        p.error(f"expected --ema in [0, 1), got {args.ema}")
    if args.decode_workers < 1:
        p.error(f"expected --decode-workers >= 1, got {args.decode_workers}")
    if args.proj and args.cell != "lstm":
        p.error(f"expected --proj 0 with --cell {args.cell} (projection is an LSTMP option), got --proj {args.proj}")
    return args


def trainable(split, args, hop_ms: float) -> list:
    """Indices of the utterances of ``split`` to train on: CTC needs at least one output frame per
    label (plus a blank between repeats), and none longer than ``--max-train-seconds``."""
    need = [len(lab) + sum(a == b for a, b in zip(lab, lab[1:])) for lab in split.labels]
    frames_out = [int(output_lengths(len(f), args.stack)) for f in split.feats]
    max_frames = args.max_train_seconds * 1000.0 / hop_ms
    ok = [i for i, (n, t, f) in enumerate(zip(need, frames_out, split.feats)) if 0 < n <= t and len(f) <= max_frames]
    if not ok:
        raise DatasetError(
            f"expected training utterances of at most {args.max_train_seconds} s with at least one output frame "
            f"per character, got none of {len(need)}"
        )
    return ok


def feature_config(args) -> S.FeatureConfig:
    return S.FeatureConfig(n_mels=args.n_mels, fmax=args.fmax, highpass_ms=args.highpass_ms)


def init_model(args, n_classes: int):
    return init_acoustic_model(
        jax.random.key(args.seed),
        feature_config(args).n_features,
        args.hidden,
        n_classes,
        stack=args.stack,
        num_layers=args.layers,
        proj_size=args.proj,
        cell=args.cell,
    )


ARCHITECTURE = ("n_mels", "highpass_ms", "stack", "hidden", "layers", "proj", "cell")
EARLIER = {"highpass_ms": 0.0}  # the value of a setting in runs from before it existed


def transfer(args, fresh, vocab):
    """``fresh`` with the layers of the run in ``--init-from`` and its head mapped by character
    (``map_classes``); returns ``(params, classes mapped)``."""
    folder = Path(args.init_from)
    folder = folder / "checkpoint" if (folder / "checkpoint").is_dir() else folder
    store = CheckpointStore(folder)
    step = store.latest_step()
    if step is None:
        raise DatasetError(f"expected --init-from to be the --out folder of a speech_ctc run, got {str(folder)!r}")
    meta = store.read_meta(step)["user"]
    saved = meta.get("config", {})
    got = {k: saved.get(k, EARLIER.get(k)) for k in ARCHITECTURE}
    if "vocab" not in meta or any(got[k] != getattr(args, k) for k in ARCHITECTURE):
        want = {k: getattr(args, k) for k in ARCHITECTURE}
        raise cli.UsageError(f"expected --init-from a speech_ctc model with {want}, got {got} in {folder}")
    like = init_model(args, len(meta["vocab"]) + 1)
    source, _ = store.restore(like, step=step)
    return map_classes(source, fresh, [""] + list(meta["vocab"]), vocab.symbols)


def load_corpus(args):
    clips = S.read_manifest(args.manifest) if args.manifest else fillets.load_fillets(args.language)
    clips = [c._replace(text=S.normalize_text(c.text)) for c in clips]
    clips = [c for c in clips if c.text]
    return S.split_clips(clips, seed=args.split_seed)


def load_extra(args, splits) -> list:
    """The clips of the ``--with-language`` corpora to train on as well: every level but those of
    ``splits``' dev and test (the same scenes, spoken in another language)."""
    held_out = {c.group for s in ("dev", "test") for c in splits[s]}
    extra = []
    for language in args.with_language:
        clips = [c._replace(text=S.normalize_text(c.text)) for c in fillets.load_fillets(language)]
        extra += [c for c in clips if c.text and c.group not in held_out]
    return extra[:64] if args.quick else extra


def run(args):
    if args.quick:
        args.hidden, args.layers, args.updates, args.buckets, args.eval_every = 16, 1, 6, 1, 3
        args.beam, args.lm_weights, args.bonuses, args.n_mels, args.batch_size = 4, [0.5], [1.0], 40, 8
        args.decode_workers = 1
    name = Path(args.manifest).stem if args.manifest else f"fillets_{args.language}"
    splits = load_corpus(args)
    if args.quick:  # a slice of each split: the quick run must not wait for a whole corpus
        splits = {s: v[: 64 if s == "train" else 16] for s, v in splits.items()}
    fcfg = feature_config(args)
    everything = [c for s in S.SPLITS for c in splits[s]]
    feats, cached = S.compute_features(everything, fcfg, cache_dir=args.cache, progress=not args.no_progress)
    offsets = np.cumsum([0] + [len(splits[s]) for s in S.SPLITS])
    raw = {s: feats[a:b] for s, a, b in zip(S.SPLITS, offsets[:-1], offsets[1:])}
    normalize = ST.make_normalizer(raw["train"], args.norm)  # the statistics of the training audio as recorded
    norm = {s: normalize(v) for s, v in raw.items()}
    texts = {s: [c.text for c in splits[s]] for s in S.SPLITS}
    extra = load_extra(args, splits)
    vocab = S.Vocab(texts["train"] + [c.text for c in extra])
    data = {s: ST.make_split(norm[s], texts[s], vocab, fcfg.hop_ms) for s in S.SPLITS}
    # the training utterances as recorded (the LM's text, the training CER), then one more copy at each speed
    train = as_recorded = ST.take(data["train"], trainable(data["train"], args, fcfg.hop_ms))
    for speed in args.speed_perturb:
        fcfg_s = fcfg._replace(speed=speed)
        fs, _ = S.compute_features(splits["train"], fcfg_s, cache_dir=args.cache, progress=not args.no_progress)
        copy = ST.make_split(normalize(fs), texts["train"], vocab, fcfg.hop_ms)
        train = ST.concat(train, ST.take(copy, trainable(copy, args, fcfg.hop_ms)))
    n_with_speeds = len(train.texts)
    if extra:  # each corpus normalised by its own statistics
        fs, _ = S.compute_features(extra, fcfg, cache_dir=args.cache, progress=not args.no_progress)
        other = ST.make_split(ST.make_normalizer(fs, args.norm)(fs), [c.text for c in extra], vocab, fcfg.hop_ms)
        train = ST.concat(train, ST.take(other, trainable(other, args, fcfg.hop_ms)))
    max_labels = max(len(lab) for lab in train.labels + [x for s in S.SPLITS for x in data[s].labels]) or 1
    buckets = S.make_buckets([len(f) for f in train.feats], args.buckets, args.stack, min_size=args.batch_size)
    longest = -(-max(len(f) for s in S.SPLITS for f in data[s].feats) // args.stack) * args.stack
    eval_lengths = buckets.lengths + [longest] * (
        longest > buckets.lengths[-1]
    )  # one more shape for long eval utterances
    hours = {s: float(data[s].seconds.sum() / 3600) for s in S.SPLITS}
    config = dict(
        vars(args),
        dataset=name,
        normalisation=S.NORMALISATION,
        features=f"{args.n_mels} log-mel, 25 ms window, 10 ms hop, up to {args.fmax:g} Hz"
        + (f", with their {args.highpass_ms:g} ms temporal high-pass" if args.highpass_ms else "")
        + f", {args.norm} normalisation, {args.stack} frames stacked",
        n_utterances={s: len(splits[s]) for s in S.SPLITS},
        n_train_used=len(as_recorded.texts),
        n_train_with_speeds=n_with_speeds,
        n_train_other_languages=len(train.texts) - n_with_speeds,
        hours_other_languages=float(train.seconds[n_with_speeds:].sum() / 3600),
        hours=hours,
        n_speakers=len({c.speaker for s in S.SPLITS for c in splits[s]}),
        groups={s: sorted({c.group for c in splits[s]}) for s in S.SPLITS},
        vocab=vocab.chars,
        bucket_frames=buckets.lengths,
        eval_bucket_frames=eval_lengths,
        features_from_cache=cached,
    )
    res = results.Results("speech_ctc", config)

    # ---- baselines on dev and test
    for split, tag in (("dev", "val"), ("test", "test")):
        hyps = S.baselines(texts["train"], data["train"].seconds, data[split].seconds, len(texts[split]))
        for model, h in hyps.items():
            res.add(name, model, "cer", tag, M.cer(texts[split], h))
            res.add(name, model, "wer", tag, M.wer(texts[split], h))

    # ---- the acoustic model
    compute_dtype = None if args.compute_dtype == "float32" else args.compute_dtype
    acfg = AcousticConfig(
        stack=args.stack, dropout=args.dropout, impl=args.impl, compute_dtype=compute_dtype, freq_width=args.freq_width,
        feature_groups=fcfg.n_features // args.n_mels if args.mask_bands else 1,
    )  # fmt: skip
    params = init_model(args, vocab.size)
    if args.init_from:
        params, res.extra["init_classes_mapped"] = transfer(args, params, vocab)
    loop, forward = ST.train_ctc(
        params, acfg, train, data["dev"], buckets, vocab, steps=args.updates, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, eval_every=args.eval_every, max_labels=max_labels, progress=not args.no_progress,
        eval_lengths=eval_lengths, ema=args.ema or None,
    )  # fmt: skip
    res.record_budget(loop.steps, loop.steps_planned, stopped_early=loop.stopped_early)
    res.extra["history"] = loop.history
    res.extra["selected"] = loop.selected  # the dev-best evaluation: its update, and whether the average
    res.extra["n_params"] = seqmodel.count_params(loop.params)
    post = lambda split: ST.log_posteriors(forward, loop.params, split, eval_lengths, args.batch_size, max_labels)  # noqa: E731
    sub = np.random.default_rng(0).permutation(len(as_recorded.texts))[: len(data["dev"].texts)]
    train_eval = ST.take(as_recorded, sub)
    decoded = {}
    for split, tag in (("train", "train"), ("dev", "val"), ("test", "test")):
        d = train_eval if split == "train" else data[split]
        lps, greedy = post(d)
        decoded[split] = {"log_probs": lps, "greedy": [vocab.decode(g) for g in greedy]}
        res.add(name, "greedy", "cer", tag, M.cer(d.texts, decoded[split]["greedy"]))
        res.add(name, "greedy", "wer", tag, M.wer(d.texts, decoded[split]["greedy"]))

    # ---- prefix beam search, without and with the character LM (weights tuned on dev)
    lm = CharNgramLM.train(as_recorded.texts, order=args.lm_order, smoothing=args.lm_smoothing)
    with ST.Decoder(vocab, lm, workers=args.decode_workers) as decoder:
        best, grid, dev_lm_texts = ST.tune_lm(
            decoded["dev"]["log_probs"], texts["dev"], decoder, args.lm_weights, args.bonuses, beam=args.beam
        )
        weights = {"lm_weight": best["lm_weight"], "insertion_bonus": best["insertion_bonus"]}
        for split in ("dev", "test"):
            lps = decoded[split]["log_probs"]
            decoded[split]["beam"] = decoder.texts(lps, beam=args.beam)
            decoded[split]["beam_lm"] = (
                dev_lm_texts if split == "dev" else decoder.texts(lps, beam=args.beam, **weights)
            )
    res.extra["lm_grid_dev"] = grid
    res.extra["lm"] = {"order": args.lm_order, "smoothing": args.lm_smoothing, **best}
    for split, tag in (("dev", "val"), ("test", "test")):
        for model in ("beam", f"beam_lm{args.lm_order}"):
            hyps = decoded[split]["beam" if model == "beam" else "beam_lm"]
            res.add(name, model, "cer", tag, M.cer(texts[split], hyps))
            res.add(name, model, "wer", tag, M.wer(texts[split], hyps))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_samples(out / "samples.txt", texts["test"], decoded["test"], args.samples)
    save_posteriors(out / "posteriors.npz", decoded, texts, vocab, as_recorded.texts)
    pick = int(np.argsort(data["test"].seconds)[len(data["test"].seconds) // 2])
    results.finish(
        res,
        args.out,
        loop.params,
        step=loop.steps,
        meta={"vocab": vocab.chars, "n_mels": args.n_mels, "stack": args.stack},
        figures={
            "speech_ctc.png": lambda path: plot(
                raw["test"][pick][:, : args.n_mels], decoded["test"], pick, texts["test"][pick], vocab, path
            )
        },
        header=f"{name}: {len(as_recorded.texts)} train / {len(texts['dev'])} dev / {len(texts['test'])} test utterances "
        f"({hours['train']:.2f} / {hours['dev']:.2f} / {hours['test']:.2f} h), {vocab.size - 1} characters; "
        f"bidirectional {args.cell} {args.layers}x{args.hidden}, {loop.steps} updates; LM weight {best['lm_weight']}, bonus {best['insertion_bonus']}",
    )


def write_samples(path, refs, decoded, n):
    lines = []
    for i in range(min(n, len(refs))):
        lines += [
            f"[{i}] ref:     {refs[i]}",
            f"    greedy:  {decoded['greedy'][i]}",
            f"    beam+lm: {decoded['beam_lm'][i]}",
            "",
        ]
    results.write_text(path, "\n".join(lines) + "\n")


def save_posteriors(path, decoded, texts, vocab, lm_texts):
    """Dev and test CTC log-posteriors (concatenated frames + per-utterance lengths), their
    references, the vocabulary and the LM's training transcripts: enough to retune or swap the
    decoder without retraining."""
    arrays = {"vocab": np.array(vocab.chars), "lm_texts": np.array(lm_texts)}
    for split in ("dev", "test"):
        lps = decoded[split]["log_probs"]
        arrays[f"{split}_log_probs"] = np.concatenate(lps).astype(np.float32)
        arrays[f"{split}_lengths"] = np.array([len(lp) for lp in lps], np.int32)
        arrays[f"{split}_refs"] = np.array(texts[split])
    np.savez_compressed(path, **arrays)


def plot(logmel, decoded, i, ref, vocab, path):
    plt = results.pyplot()
    lp = decoded["log_probs"][i]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=False)
    ax1.imshow(logmel.T, origin="lower", aspect="auto", cmap="magma")
    ax1.set_ylabel("mel band")
    ax1.set_title(
        f"log-mel (10 ms frames)\nref:    {ref}\ngreedy: {decoded['greedy'][i]}\nbeam+LM: {decoded['beam_lm'][i]}",
        fontsize=8,
        loc="left",
    )
    probs = np.exp(lp)
    ax2.imshow(probs.T, origin="lower", aspect="auto", cmap="Greys", interpolation="nearest")
    ax2.set_yticks(range(vocab.size), ["<b>"] + [c if c != " " else "_" for c in vocab.chars], fontsize=5)
    ax2.set_xlabel("output frame")
    ax2.set_title("CTC posteriors", fontsize=8)
    results.save_figure(fig, path)


main = cli.make_main(parse, run)

if __name__ == "__main__":
    sys.exit(cli.run_main(main))
