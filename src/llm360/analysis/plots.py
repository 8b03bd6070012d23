"""The Analysis360 memorization figures, as PNG files under RUN/analysis/ (matplotlib, Agg).

    memorization_by_chunk.png      mean score against chunk index, one line per checkpoint
                                   (filled markers: chunks the checkpoint had trained on)
    memorization_histogram.png     how many rows matched 0..l tokens, for a few checkpoints
    memorization_correlation.png   correlation of per-row scores between checkpoints
    memorization_chunk_NNN.png     one chunk's mean score and extractable fraction against the
                                   checkpoint's step: learning, then forgetting

matplotlib is the optional extra `plots`; without it the plots are skipped with a note.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llm360.analysis.records import read_scores, read_summary
from llm360.rundir import pad_width

PLOTS_HINT = "pip install 'llm360[plots]'"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_locator():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)
    return path


def plot_memorization(run_dir: str | Path, chunk: int | None = None, console=None) -> list[Path]:
    """Draw the memorization figures from summary.jsonl and scores.parquet; [] without matplotlib."""

    plt = _pyplot()
    if plt is None:
        message = f"memorization plots skipped: matplotlib is not installed ({PLOTS_HINT})"
        if console is not None:
            console.print(message, markup=False)
        else:
            print(message)
        return []
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    if not summary:
        return []
    out = run_dir / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    ckpts = sorted({(r["step"], r["checkpoint"]) for r in summary})
    names = [name for _, name in ckpts]
    cmap = plt.get_cmap("viridis")
    colors = {name: cmap(i / max(1, len(names) - 1)) for i, name in enumerate(names)}
    width = pad_width(max(r["chunk"] for r in summary) + 1)
    paths = []
    try:
        # 1. mean score against chunk, a line per checkpoint (the LLM360 figure)
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for name in names:
            recs = sorted((r for r in summary if r["checkpoint"] == name), key=lambda r: r["chunk"])
            x = [r["chunk"] for r in recs]
            y = [r["mean_score"] for r in recs]
            ax.plot(x, y, "-", color=colors[name], lw=1.2, label=name if len(names) <= 12 else None)
            seen = [(a, b) for a, b, r in zip(x, y, recs) if r["seen"]]
            unseen = [(a, b) for a, b, r in zip(x, y, recs) if not r["seen"]]
            if seen:
                ax.plot(*zip(*seen), "o", color=colors[name], ms=4)
            if unseen:
                ax.plot(*zip(*unseen), "o", mfc="none", color=colors[name], ms=4)
        ax.xaxis.set_major_locator(_integer_locator())
        ax.set_xlabel("chunk")
        ax.set_ylabel("mean memorization score")
        ax.set_title("Memorization by chunk (filled: chunk seen by the checkpoint)")
        if len(names) <= 12:
            ax.legend(fontsize=7, ncol=2)
        else:
            sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(ckpts[0][0], ckpts[-1][0]))
            fig.colorbar(sm, ax=ax, label="checkpoint step")
        paths.append(_save(fig, out / "memorization_by_chunk.png"))
        plt.close(fig)

        # 2. histogram of scores (a few checkpoints, summed over chunks)
        fig, ax = plt.subplots(figsize=(8, 4.5))
        picks = sorted({names[i] for i in np.linspace(0, len(names) - 1, min(4, len(names))).round().astype(int)},
                       key=names.index)
        bins = len(summary[0]["histogram"])
        w = 0.8 / len(picks)
        for i, name in enumerate(picks):
            hist = np.sum([r["histogram"] for r in summary if r["checkpoint"] == name], axis=0)
            ax.bar(np.arange(bins) / (bins - 1) + (i - (len(picks) - 1) / 2) * w / (bins - 1), hist,
                   width=w / (bins - 1), color=colors[name], label=name)
        ax.set_yscale("log")
        ax.set_xlabel("memorization score")
        ax.set_ylabel("rows")
        ax.set_title("Distribution of memorization scores")
        ax.legend(fontsize=8)
        paths.append(_save(fig, out / "memorization_histogram.png"))
        plt.close(fig)

        # 3. correlation of per-row scores between checkpoints
        scores = read_scores(run_dir)
        if scores is not None and len(names) > 1:
            cols = {c: scores.column(c).to_numpy(zero_copy_only=False) for c in ("checkpoint", "chunk", "row", "score")}
            keys = sorted(set(zip(cols["chunk"].tolist(), cols["row"].tolist())))
            pos = {key: i for i, key in enumerate(keys)}
            matrix = np.full((len(keys), len(names)), np.nan)
            col_of = {name: j for j, name in enumerate(names)}
            for name, c, r, s in zip(cols["checkpoint"], cols["chunk"], cols["row"], cols["score"]):
                if name in col_of:
                    matrix[pos[(int(c), int(r))], col_of[name]] = s
            matrix = matrix[~np.isnan(matrix).any(axis=1)]  # rows every checkpoint scored
            if len(matrix) > 1:
                with np.errstate(invalid="ignore", divide="ignore"):
                    corr = np.corrcoef(matrix, rowvar=False)
                fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(names), 0.9 + 0.45 * len(names)))
                im = ax.imshow(np.ma.masked_invalid(corr), vmin=-1, vmax=1, cmap="RdBu_r")
                ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
                ax.set_yticks(range(len(names)), names, fontsize=7)
                ax.set_title(f"Correlation of per-row scores ({len(matrix)} rows)")
                fig.colorbar(im, ax=ax)
                paths.append(_save(fig, out / "memorization_correlation.png"))
                plt.close(fig)

        # 4. one chunk across checkpoints: learning and forgetting
        chunks = sorted({r["chunk"] for r in summary})
        chunk = chunks[0] if chunk is None or chunk not in chunks else chunk
        recs = sorted((r for r in summary if r["chunk"] == chunk), key=lambda r: r["step"])
        fig, ax = plt.subplots(figsize=(8, 4.5))
        steps = [r["step"] for r in recs]
        ax.plot(steps, [r["mean_score"] for r in recs], "o-", label="mean score")
        ax.plot(steps, [r["extractable_frac"] for r in recs], "s--", label="k-extractable fraction")
        trained = [r["step"] for r in recs if r["seen"]]
        if trained:
            ax.axvline(min(trained), color="grey", ls=":", label=f"chunk {chunk} trained")
        ax.set_xlabel("checkpoint step")
        ax.set_ylabel("memorization")
        ax.set_title(f"Chunk {chunk} across checkpoints")
        ax.legend(fontsize=8)
        paths.append(_save(fig, out / f"memorization_chunk_{chunk:0{width}d}.png"))
        plt.close(fig)
    finally:
        plt.close("all")
    return paths
