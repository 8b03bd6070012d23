"""Fill-in-the-middle (FIM): a stage rearranges some document pieces of a source's rows.

We follow bigcode's Megatron-LM (`permute` in megatron/data/gpt_dataset.py, used to train
StarCoder; NVIDIA Megatron-LM's GPTFIMDataset keeps the same layout). A piece of content `c` is cut
at two points drawn uniformly from 0..len(c) and sorted, into prefix P, middle M and suffix S, and
written with StarCoder's tokens as

    PSM:  <fim_prefix> P <fim_suffix> S <fim_middle> M
    SPM:  <fim_prefix> <fim_suffix> S <fim_middle> P M

The three added tokens are paid for by dropping the last 3 tokens of S, so the piece keeps its
length (bigcode's `truncate_or_pad`); a piece whose suffix is 3 tokens or fewer stays as it is,
as there.

Where we differ, and why:
- bigcode splits a row at EOD into segments; we use the row's spans, which say the same with no
  guessing (a piece's content is its tokens without the EOS that ends a document). Each piece
  keeps its place in the row, so the spans' offsets and lengths stay true (bigcode truncates at
  the row's end, shifting the pieces after a rearranged one).
- Cut points are in tokens, not characters: no re-tokenizing, so what the spans record is
  exactly what is in the row.
- Rows are rearranged when a stage writes them, since documents are tokenized once into each
  source's shared stream and stages draw rows from it; a stage's rate applies to its own rows.

The draws are a pure function of (seed, chunk): `seeded_rng(seed, "fim", CHUNK)` draws, for the
chunk's pieces of FIM sources in spans order (row, then offset), whether to rearrange, SPM or
PSM, and the two cut points, so chunks are byte-identical whatever the workers or shards.
"""

from __future__ import annotations

import numpy as np

FIM_TOKENS = ("<fim_prefix>", "<fim_middle>", "<fim_suffix>")  # StarCoder's names
MARKER = 3  # tokens added to a rearranged piece (and dropped from its suffix)
MODES = ("", "psm", "spm")  # the spans' `fim` column: not rearranged, PSM, SPM


def rearrange(content: np.ndarray, prefix: int, middle: int, spm: bool, ids: dict[str, int]) -> np.ndarray:
    """`content` rearranged with the first `prefix` tokens as P and the next `middle` as M."""
    P, M = content[:prefix], content[prefix : prefix + middle]
    S = content[prefix + middle : len(content) - MARKER]
    pre, mid, suf = (np.array([ids[t]], content.dtype) for t in FIM_TOKENS)
    if spm:
        return np.concatenate([pre, suf, S, mid, P, M])
    return np.concatenate([pre, P, suf, S, mid, M])


def draw(rng: np.random.Generator, content: np.ndarray, rate: np.ndarray, spm_ratio: np.ndarray):
    """For pieces of `content` tokens: (mode index into MODES, prefix tokens, middle tokens).

    `rate` and `spm_ratio` are per piece (its source's, in this stage). Every piece consumes the
    same draws whether or not it is rearranged, so one piece's outcome never shifts another's.
    """
    apply = rng.random(len(content)) < rate
    spm = rng.random(len(content)) < spm_ratio
    cuts = np.sort(rng.integers(0, content + 1, size=(2, len(content))), axis=0)
    apply &= content - cuts[1] > MARKER
    mode = np.where(apply, np.where(spm, 2, 1), 0).astype(np.int8)
    return mode, np.where(apply, cuts[0], 0), np.where(apply, cuts[1] - cuts[0], 0)


def apply_to_chunk(arr: np.ndarray, spans: dict[str, np.ndarray], doc_tokens: np.ndarray, fim: list,
                   source: np.ndarray, rng: np.random.Generator, ids: dict[str, int]) -> dict[str, np.ndarray]:
    """Rearrange pieces of `arr` (a chunk, rows x tokens) in place; return the spans' FIM columns.

    `spans` are the chunk's spans in table order, `doc_tokens` each span's document length (EOS
    included), `source` each span's source index and `fim[s]` that source's FimConfig or None.
    """
    n = len(spans["row"])
    ends_doc = spans["doc_token_offset"] + spans["length"] == doc_tokens
    content = spans["length"] - ends_doc.astype(np.int64)
    rate = np.array([f.rate if f else 0.0 for f in fim])[source]
    spm_ratio = np.array([f.spm_ratio if f else 0.0 for f in fim])[source]
    eligible = np.flatnonzero(rate > 0)
    mode = np.zeros(n, np.int8)
    prefix, middle = np.zeros(n, np.int32), np.zeros(n, np.int32)
    mode[eligible], prefix[eligible], middle[eligible] = draw(rng, content[eligible], rate[eligible], spm_ratio[eligible])
    for i in np.flatnonzero(mode).tolist():
        row, lo = int(spans["row"][i]), int(spans["offset"][i])
        piece = arr[row, lo : lo + int(content[i])]
        arr[row, lo : lo + int(content[i])] = rearrange(np.array(piece), int(prefix[i]), int(middle[i]), mode[i] == 2, ids)
    suffix = np.where(mode > 0, content - MARKER - prefix - middle, 0)
    return {"fim": np.array(MODES, dtype=object)[mode], "fim_prefix": prefix, "fim_middle": middle, "fim_suffix": suffix.astype(np.int32)}
