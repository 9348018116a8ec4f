"""The eval stage's parts on the tiny model and real records: prompts, generation, checks, losses."""

import json

import numpy as np
import pytest
import torch

from tokenweight.components.generate import hf_generate, pick_backend
from tokenweight.components.token_loss import reference_token_losses
from tokenweight.components.batching import pad_batch
from tokenweight.sources.bfcl import answer_text, read_bfcl
from tokenweight.components.generate import prompt_text
from tokenweight.components.heldout_loss import heldout_losses
from tokenweight.evals.answer_check import check_answer


def test_the_prompt_is_the_conversation_up_to_the_last_assistant_turn(smol_tokenizer):
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                {"role": "user", "content": "and 3+3?"}, {"role": "assistant", "content": "6"}]
    text = prompt_text(smol_tokenizer, messages)
    assert text.endswith("<|im_start|>assistant\n")
    assert "and 3+3?" in text and "4<|im_end|>" in text and "6" not in text.split("and 3+3?")[1]


def test_batched_greedy_generation_equals_one_prompt_at_a_time(tiny_model, smol_tokenizer):
    prompts = [prompt_text(smol_tokenizer, [{"role": "user", "content": q}, {"role": "assistant", "content": ""}])
               for q in ("hi", "what is the weather in a long sentence about Paris today?", "ok then")]
    batched, counts = hf_generate(tiny_model, smol_tokenizer, prompts, max_new_tokens=6, batch_size=3)
    for prompt, answer, count in zip(prompts, batched, counts):
        alone, alone_counts = hf_generate(tiny_model, smol_tokenizer, [prompt], max_new_tokens=6, batch_size=1)
        assert alone == [answer] and alone_counts == [count]
    assert all(0 < c <= 6 for c in counts)


def test_backend_choice_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert pick_backend("auto") == "hf"
    with pytest.raises(RuntimeError, match="vllm or CUDA is not available"):
        pick_backend("vllm")


def _bfcl_sample(category="parallel"):
    return next(s for s in read_bfcl([category], 1) if hasattr(s, "meta"))


def test_bfcl_answers_are_checked_by_the_official_checker():
    sample = _bfcl_sample()
    meta = json.loads(json.dumps(sample.meta))  # as stored in the prepared shards
    right = answer_text(meta["ground_truth"])
    task, correct, error, gold = check_answer(right, meta)
    assert (task, correct, error) == ("bfcl:parallel", True, None)
    assert json.loads(gold) == meta["ground_truth"]
    task, correct, error, _ = check_answer("I cannot call functions.", meta)
    assert correct is False and error.startswith("unparseable")


def test_gsm_answers_are_checked_by_the_final_number():
    assert check_answer("3 + 4 = 7.\nThe answer is 7.", {"answer": "7"})[1:3] == (True, None)
    assert check_answer("The answer is 8.", {"answer": "7"})[1:3] == (False, "wrong final answer")
    assert check_answer("anything", {"source": "chat"}) == ("none", None, None, None)


def test_heldout_losses_split_the_reference_losses_by_class(tiny_model, smol_tokenizer):
    rng = np.random.default_rng(0)
    rows = []
    for n in (9, 14, 11):
        mask = [0] * 4 + [1] * (n - 4)
        rows.append({"input_ids": rng.integers(100, 3000, n).tolist(), "loss_mask": mask,
                     "token_class": rng.integers(0, 2, n).tolist()})
    got = heldout_losses(tiny_model, rows, smol_tokenizer.pad_token_id, batch_tokens=32)
    for i, row in enumerate(rows):
        ids, attn, mask = pad_batch([row["input_ids"]], [row["loss_mask"]], smol_tokenizer.pad_token_id)
        ref = reference_token_losses(tiny_model, ids, attn, mask)[0].detach().numpy()
        target = np.asarray(row["loss_mask"], bool)
        cls = np.asarray(row["token_class"])
        for c in (0, 1):
            sel = target & (cls == c)
            assert got[i, 2 * c] == pytest.approx(ref[sel].sum(), rel=1e-4)
            assert got[i, 2 * c + 1] == sel.sum()
