"""Machine translation with an attentional LSTM encoder-decoder: Spanish -> English on the
verse-aligned Bible (King James Version / Reina-Valera 1909, Debian's SWORD packages), whole
books held out (test: Joshua, Ecclesiastes, John, Hebrews; dev: Ruth, Esther, Daniel,
Lamentations, Galatians, Philippians, James, 1 Peter). Sentencepiece subwords are trained on
the training split in the run; a bidirectional LSTM encoder, an LSTM decoder with Luong
attention and input feeding, label smoothing; greedy and beam-search translations scored with
sacrebleu (BLEU, chrF) against two baselines computed in the same run on the same test set:
copy-the-source and word-by-word IBM Model 1.

The budget is a number of optimiser updates (``--updates``), so the numbers do not depend on
the machine's speed or load.

    python experiments/translate.py                      # es -> en, 3,000 updates
    python experiments/translate.py --direction en-es
    python experiments/translate.py --tsv pairs.tsv      # your own source<TAB>target[<TAB>split] lines
    python experiments/translate.py --max-words 30       # shorter verses only (CPU budgets)
    python experiments/translate.py --quick

Outputs in ``--out``: ``metrics.json`` (BLEU/chrF per model and split, the learning curve),
``attention.png``, ``samples.txt``, ``checkpoint/`` with ``spm_src.model``/``spm_tgt.model``
beside it. Needs ``apt-get install -y --no-install-recommends sword-text-kjv sword-text-sparv
python3-sword`` for the Bible (not for ``--tsv``) and ``pip install sentencepiece sacrebleu``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lstm_jax.tasks import cli, results
from lstm_jax.tasks import translate as T


def parse(argv):
    p = cli.make_parser("translate", __doc__.splitlines()[0])
    p.add_argument("--direction", choices=("es-en", "en-es"), default="es-en", help="Bible direction")
    p.add_argument("--tsv", help="parallel text: source<TAB>target[<TAB>train|dev|test] per line")
    p.add_argument("--cache", default=None, help="folder of the cached Bible pairs (default ~/.cache/lstm_jax)")
    p.add_argument("--max-words", type=int, default=0, help="keep pairs of at most N words a side (0: all)")
    p.add_argument("--updates", type=int, default=3000, help="optimiser updates, the budget (default: %(default)s)")
    p.add_argument("--eval-every", type=int, default=500, help="updates between dev-BLEU points")
    p.add_argument("--src-vocab", type=int, default=6000)
    p.add_argument("--tgt-vocab", type=int, default=4000)
    p.add_argument("--embed", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--enc-layers", type=int, default=1)
    p.add_argument("--dec-layers", type=int, default=1)
    p.add_argument("--attention", choices=("dot", "general", "bahdanau"), default="general")
    p.add_argument("--no-input-feeding", action="store_true")
    p.add_argument("--tokens", type=int, default=2000, help="padded positions per batch")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--alpha", type=float, default=0.6, help="GNMT length penalty exponent")
    args = p.parse_args(argv)
    if args.cell != "lstm":
        p.error(f"expected --cell lstm (the encoder-decoder is LSTM-only), got {args.cell}")
    for name in ("updates", "beam", "tokens"):
        if getattr(args, name) < 1:
            p.error(f"expected --{name} >= 1, got {getattr(args, name)}")
    return args


def _corpus(args):
    corpus = T.tsv_corpus(args.tsv, seed=args.seed) if args.tsv else T.bible_corpus(args.direction, args.cache)
    if args.max_words:
        corpus = T.cap_words(corpus, args.max_words)
    if args.quick:
        corpus = T.Corpus(corpus.name, corpus.train[:1500], corpus.val[:40], corpus.test[:40])
    for split in ("train", "val", "test"):
        if not getattr(corpus, split):
            raise cli.UsageError(f"expected pairs in the {split} split of {corpus.name}, got none")
    return corpus


def run(args):
    corpus = _corpus(args)
    out = Path(args.out)
    size = dict(embed=args.embed, hidden=args.hidden, updates=args.updates, tokens=args.tokens, beam=args.beam)
    vocab = (args.src_vocab, args.tgt_vocab)
    if args.quick:
        size, vocab = dict(embed=32, hidden=32, updates=40, tokens=512, beam=2), (400, 400)
    sw = T.train_subwords(corpus, out, src_vocab=vocab[0], tgt_vocab=vocab[1])
    config = dict(
        vars(args),
        **size,
        dataset=corpus.name,
        src_vocab_real=sw.src.get_piece_size(),
        tgt_vocab_real=sw.tgt.get_piece_size(),
        n_pairs={s: len(getattr(corpus, s)) for s in ("train", "val", "test")},
    )
    res = results.Results("translate", config)
    splits = {"val": corpus.val, "test": corpus.test}
    refs = {s: [t for _, t in pairs] for s, pairs in splits.items()}
    srcs = {s: [x for x, _ in pairs] for s, pairs in splits.items()}
    table = T.fit_ibm1(corpus.train)
    for split in splits:
        for model, hyps in (("copy", srcs[split]), ("ibm1", [T.ibm1_translate(table, x) for x in srcs[split]])):
            sc = T.score(hyps, refs[split])
            res.add(corpus.name, model, "bleu", split, sc["bleu"], signature=sc["bleu_signature"])
            res.add(corpus.name, model, "chrf", split, sc["chrf"], signature=sc["chrf_signature"])

    tr = T.train_translation(
        corpus,
        sw,
        embed=size["embed"],
        hidden=size["hidden"],
        enc_layers=args.enc_layers,
        dec_layers=args.dec_layers,
        attention=args.attention,
        input_feeding=not args.no_input_feeding,
        tokens=size["tokens"],
        lr=args.lr,
        label_smoothing=args.label_smoothing,
        dropout=args.dropout,
        updates=size["updates"],
        eval_every=min(args.eval_every, size["updates"]),
        dev_sample=40 if args.quick else 300,
        seed=args.seed,
        impl=args.impl,
        progress=not args.no_progress,
        desc=f"lstm {corpus.name}",
    )
    res.record_budget(tr.updates, tr.updates_planned, stopped_early=False)
    res.extra["history"] = tr.history
    res.extra["dropped_long_train_pairs"] = tr.dropped
    greedy = T.Translator(sw, beam=1, batch=64, impl=args.impl)
    beam = T.Translator(sw, beam=size["beam"], alpha=args.alpha, batch=32, impl=args.impl)
    outputs = {}
    for split in splits:
        for model, translator in (("lstm_greedy", greedy), (f"lstm_beam{size['beam']}", beam)):
            hyps, pieces, attn = translator(tr.params, srcs[split])
            outputs[(model, split)] = (hyps, pieces, attn)
            sc = T.score(hyps, refs[split])
            res.add(corpus.name, model, "bleu", split, sc["bleu"], signature=sc["bleu_signature"], updates=tr.updates)
            res.add(corpus.name, model, "chrf", split, sc["chrf"], signature=sc["chrf_signature"], updates=tr.updates)
    beam_name = f"lstm_beam{size['beam']}"
    _write_samples(
        out / "samples.txt", corpus.test, outputs[("lstm_greedy", "test")][0], outputs[(beam_name, "test")][0]
    )
    sample_idx = _short_examples(corpus.test, 4)
    results.finish(
        res,
        args.out,
        tr.params,
        step=tr.updates,
        meta={"spm_src": sw.src_model.name, "spm_tgt": sw.tgt_model.name, "pad_bos_eos_unk": [0, 1, 2, 3]},
        figures={
            "attention.png": lambda path: plot_attention(
                sw, corpus.test, outputs[(beam_name, "test")], sample_idx, path
            )
        },
        header=f"{corpus.name}: {len(corpus.train):,} train / {len(corpus.val):,} dev / {len(corpus.test):,} test pairs; "
        f"subwords {sw.src.get_piece_size()}/{sw.tgt.get_piece_size()}; {tr.updates} updates",
    )


def _short_examples(pairs, n):
    order = sorted(range(len(pairs)), key=lambda k: (not 6 <= len(pairs[k][0].split()) <= 14, k))
    return order[:n]


def _write_samples(path, pairs, greedy, beam, n=12):
    lines = []
    for k in range(min(n, len(pairs))):
        src, ref = pairs[k]
        lines += [f"source:    {src}", f"reference: {ref}", f"greedy:    {greedy[k]}", f"beam:      {beam[k]}", ""]
    results.write_text(path, "\n".join(lines))


def plot_attention(sw, pairs, output, idx, path):
    plt = results.pyplot()
    _, pieces, attn = output
    fig, axes = plt.subplots(1, len(idx), figsize=(4.5 * len(idx), 4.5), squeeze=False)
    for ax, k in zip(axes[0], idx):
        src_pieces = [sw.src.id_to_piece(int(x)) for x in sw.src.encode(pairs[k][0])]
        a = attn[k][: len(pieces[k]) + 1]
        ax.imshow(a, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(src_pieces)), src_pieces, rotation=90, fontsize=7)
        ax.set_yticks(range(a.shape[0]), pieces[k] + ["</s>"][: a.shape[0] - len(pieces[k])], fontsize=7)
    fig.suptitle("attention of the beam-search output (test verses)")
    results.save_figure(fig, path)


main = cli.make_main(parse, run)

if __name__ == "__main__":
    sys.exit(cli.run_main(main))
