"""Generation and scoring: parity with transformers, KV cache, sampling, lm-eval tokenization."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from helpers_model import EOS, export, hf_model, tiny_model, train_tokenizer
from llm360.errors import UserError
from llm360.model.generate import (cli_generate, encode_request, generate, load_tokenizer, score_requests,
                                   score_tokens)

transformers = pytest.importorskip("transformers")

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [20, 21], [30, 31, 32, 33], [3], [40, 41, 42, 43, 44, 45, 46], [7, 7]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model with lively logits (init_std 0.3: a 0.02 init just repeats the last token),
    its HF export with a trained tokenizer, and the transformers model loaded from it."""
    root = tmp_path_factory.mktemp("gen")
    tok_dir = train_tokenizer(root / "tok")
    tokenizer = load_tokenizer(tok_dir)
    model, args = tiny_model(seed=0, init_std=0.3, vocab_size=tokenizer.get_vocab_size())
    ck = export(model, args, root / "ck", tokenizer_dir=tok_dir, eos_id=tokenizer.token_to_id(EOS))
    return model, args, tokenizer, ck, hf_model(ck)


def test_greedy_matches_transformers_token_for_token(setup):
    model, args, _, _, hf = setup
    ours = generate(model, PROMPTS, 16, batch_size=4)  # mixed lengths in a batch, two batches
    assert all(len(o) == 16 for o in ours)
    assert len({tuple(o) for o in ours}) > 1
    # transformers, one prompt at a time (no padding at all)
    for prompt, out in zip(PROMPTS, ours):
        ref = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          max_new_tokens=16, do_sample=False, pad_token_id=0)
        assert out == ref[0, len(prompt):].tolist(), prompt
    # transformers, all prompts in one left-padded batch
    L = max(map(len, PROMPTS))
    ids = torch.tensor([[0] * (L - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in PROMPTS])
    ref = hf.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, pad_token_id=0)
    assert ours == ref[:, L:].tolist()


def test_cached_generation_equals_full_recompute(setup):
    model, *_ = setup
    ours = generate(model, PROMPTS, 10)
    for prompt, out in zip(PROMPTS, ours):
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(10):
                seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        assert out == seq[len(prompt):]


def test_sampling_is_seeded(setup):
    model, *_ = setup
    a = generate(model, PROMPTS, 12, temperature=1.0, seed=1)
    b = generate(model, PROMPTS, 12, temperature=1.0, seed=1)
    c = generate(model, PROMPTS, 12, temperature=1.0, seed=2)
    assert a == b and a != c
    assert generate(model, PROMPTS, 12, temperature=1.0, top_k=1, seed=3) == generate(model, PROMPTS, 12)
    top3 = generate(model, [PROMPTS[0]] * 8, 1, temperature=5.0, top_k=3, seed=4)
    with torch.no_grad():
        allowed = set(model(torch.tensor([PROMPTS[0]]))[0, -1].topk(3).indices.tolist())
    assert {o[0] for o in top3} <= allowed


def test_eos_stops_a_row_early(setup):
    model, *_ = setup
    full = generate(model, PROMPTS[:2], 12)
    eos = full[0][3]
    out = generate(model, PROMPTS[:2], 12, eos_id=eos)
    assert out[0] == full[0][:full[0].index(eos) + 1]
    assert out[1] == (full[1][:full[1].index(eos) + 1] if eos in full[1] else full[1])


def test_generation_input_errors(setup):
    model, args, *_ = setup
    with pytest.raises(UserError, match="exceeds the model context"):
        generate(model, [[1] * (args.max_seq_len - 4)], 5)
    with pytest.raises(UserError, match="prompt 1 is empty"):
        generate(model, [[1], []], 5)
    assert generate(model, [[1, 2]], 0) == [[]]


# ---------------------------------------------------------------------------------------------
# scoring


def reference_scores(hf, pairs, max_len):
    """lm-eval's computation, one request at a time with transformers."""
    out = []
    for ctx, cont in pairs:
        whole = (ctx + cont)[-(max_len + 1):]
        inp = torch.tensor([whole[:-1]])
        with torch.no_grad():
            logprobs = F.log_softmax(hf(inp).logits[0, -len(cont):], dim=-1)
        target = torch.tensor(cont)
        out.append((logprobs.gather(-1, target[:, None]).sum().item(), bool((logprobs.argmax(-1) == target).all())))
    return out


def test_score_tokens_matches_transformers(setup):
    model, args, _, _, hf = setup
    torch.manual_seed(0)
    greedy = generate(model, [PROMPTS[0]], 5)[0]
    pairs = [(PROMPTS[0], greedy)]  # greedy continuation: is_greedy must be True
    for n_ctx, n_cont in [(3, 4), (10, 1), (1, 9), (25, 6), (args.max_seq_len + 20, 7)]:  # the last one is truncated
        pairs.append((torch.randint(0, args.vocab_size, (n_ctx,)).tolist(),
                      torch.randint(0, args.vocab_size, (n_cont,)).tolist()))
    pairs.append((PROMPTS[1], []))
    ours = score_tokens(model, pairs, batch_size=3)
    ref = reference_scores(hf, pairs[:-1], args.max_seq_len)
    assert ours[0][1] is True
    for (lp, g), (ref_lp, ref_g) in zip(ours, ref):
        assert abs(lp - ref_lp) <= 1e-4 and g == ref_g
    assert ours[-1] == (0.0, True)


def test_lm_eval_tokenization(setup):
    _, _, tokenizer, _, _ = setup
    ctx, cont = encode_request(tokenizer, "Question: what is it?\nAnswer: ", "a list")
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False).ids  # noqa: E731
    # the trailing space moved to the continuation, and the split is taken from the whole encoding
    assert ctx == enc("Question: what is it?\nAnswer:")
    assert ctx + cont == enc("Question: what is it?\nAnswer: a list")
    assert tokenizer.decode(cont) == " a list"
    eos = tokenizer.token_to_id(EOS)
    assert encode_request(tokenizer, "", "Hello", prefix_token_id=eos) == ([eos], enc("Hello"))


def test_score_requests_matches_transformers(setup):
    model, args, tokenizer, ck, hf = setup
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(ck / "tokenizer.json"))
    requests = [("The object is ", "a mapping"), ("Return the path", " of the file."), ("", "Hello world"),
                ("A list of items:\n", "- one")]
    ours = score_requests(model, tokenizer, requests, batch_size=2)
    eos = tokenizer.token_to_id(EOS)
    for (context, continuation), (lp, greedy) in zip(requests, ours):
        if context:
            context, continuation = context.rstrip(), context[len(context.rstrip()):] + continuation
            whole = hf_tok(context + continuation, add_special_tokens=False).input_ids
            ctx = hf_tok(context, add_special_tokens=False).input_ids
        else:
            whole = [eos] + hf_tok(continuation, add_special_tokens=False).input_ids
            ctx = [eos]
        ((ref_lp, ref_greedy),) = reference_scores(hf, [(ctx, whole[len(ctx):])], args.max_seq_len)
        assert abs(lp - ref_lp) <= 1e-4 and greedy == ref_greedy


def test_score_errors(setup):
    model, args, *_ = setup
    with pytest.raises(UserError, match="empty context"):
        score_tokens(model, [([], [1, 2])])
    with pytest.raises(UserError, match="continuation of"):
        score_tokens(model, [([1], [1] * (args.max_seq_len + 1))])


# ---------------------------------------------------------------------------------------------
# command line


def test_cli_generate(setup, capsys):
    model, _, tokenizer, ck, _ = setup
    ns = argparse.Namespace(checkpoint=str(ck), prompt="The path", max_new_tokens=8, temperature=0.0, top_k=None,
                            seed=None, json=True)
    assert cli_generate(ns) == 0
    out = json.loads(capsys.readouterr().out)
    ids = tokenizer.encode("The path").ids
    expected = generate(model, [ids], 8, eos_id=tokenizer.token_to_id(EOS))[0]
    assert out["prompt"] == "The path" and out["tokens"] == expected
    assert out["completion"] == tokenizer.decode(expected)
    ns.json = False
    assert cli_generate(ns) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("The path") and "warning" not in captured.err  # no checksums: nothing to check


def test_cli_generate_warns_about_a_damaged_checkpoint(setup, tmp_path, capsys):
    from llm360.rundir import write_checksums

    ck = tmp_path / "ckpt_000"
    shutil.copytree(setup[3], ck)
    write_checksums(ck)
    ns = argparse.Namespace(checkpoint=str(ck), prompt="The path", max_new_tokens=2, temperature=0.0, top_k=None,
                            seed=None, json=True)
    assert cli_generate(ns) == 0 and "warning" not in capsys.readouterr().err
    with open(ck / "config.json", "a") as f:
        f.write(" ")
    assert cli_generate(ns) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "ckpt_000/config.json: sha256 differs" in err
    ns.checkpoint = str(ck.parent / "missing")
    with pytest.raises(UserError):
        cli_generate(ns)
