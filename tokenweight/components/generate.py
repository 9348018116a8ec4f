"""Greedy batched generation for the eval and critical stages: transformers `generate` or vLLM.

Prompts are chat-template texts ending in the generation prompt. The hf backend sorts prompts by
length so each batch pads little, pads on the left (what decoder-only generation needs) and
returns the answers in the order given. The vllm backend runs only when asked for by name
(`eval.backend: vllm`): it has not yet been run and checked against hf on a GPU, so `auto` means hf.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def vllm_usable() -> bool:
    if not torch.cuda.is_available():
        return False
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def pick_backend(backend: str) -> str:
    """`auto` -> hf (nothing untested is chosen silently); an explicit vllm that cannot run is an error."""
    if backend == "auto":
        return "hf"
    if backend == "vllm" and not vllm_usable():
        raise RuntimeError("eval.backend is vllm but vllm or CUDA is not available here; use hf or auto")
    return backend


def hf_generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int,
                on_batch: Callable[[int, int], None] | None = None) -> tuple[list[str], list[int]]:
    """Greedy answers (decoded, special tokens dropped) and their generated token counts."""
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    new = greedy_ids(model, encoded, max_new_tokens, batch_size, tokenizer.pad_token_id, stop_ids(tokenizer), on_batch)
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in new], [len(ids) for ids in new]


@torch.no_grad()
def greedy_ids(model, encoded: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int], batch_size: int,
               pad: int, eos: Sequence[int], on_batch: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """The greedy continuation of each token-id prompt, cut before its first end-of-turn id.

    `max_new_tokens` is one budget for all or one per prompt (a batch decodes to its largest, and
    each continuation is cut to its own). Prompts run sorted by length so each batch pads little,
    padded on the left (what decoder-only generation needs); results come back in the given order.
    """
    budgets = [max_new_tokens] * len(encoded) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out: list[list[int]] = [[] for _ in encoded]
    device = next(model.parameters()).device
    model.eval()
    for start in range(0, len(order), batch_size):
        batch = [i for i in order[start : start + batch_size] if budgets[i] > 0]
        if not batch:
            continue
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for b, i in enumerate(batch):
            ids[b, width - len(encoded[i]) :] = torch.as_tensor(encoded[i])
            attn[b, width - len(encoded[i]) :] = 1
        generated = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), do_sample=False,
                                   max_new_tokens=max(budgets[i] for i in batch), pad_token_id=pad,
                                   eos_token_id=list(eos), temperature=None, top_p=None, top_k=None)
        for b, i in enumerate(batch):
            new = generated[b, width:].tolist()[: budgets[i]]
            cut = next((k for k, t in enumerate(new) if t in eos), len(new))
            out[i] = new[:cut]
        if on_batch:
            on_batch(len(batch), sum(len(out[i]) for i in batch))
    return out


def vllm_generate(model_dir: str, prompts: Sequence[str], max_new_tokens: int, seed: int = 0,
                  on_batch: Callable[[int, int], None] | None = None) -> tuple[list[str], list[int]]:
    """Greedy answers from vLLM (continuous batching over all prompts at once)."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, dtype="bfloat16", seed=seed, enforce_eager=False)
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
    outputs = llm.generate(list(prompts), params)
    answers = [o.outputs[0].text for o in outputs]
    counts = [len(o.outputs[0].token_ids) for o in outputs]
    if on_batch:
        on_batch(len(prompts), sum(counts))
    return answers, counts


def stop_ids(tokenizer) -> list[int]:
    """End-of-turn ids: the eos token and the chat template's turn end where it differs."""
    ids = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def prompt_text(tokenizer, messages: list[dict[str, str]]) -> str:
    """The conversation up to (not including) its last assistant turn, ready for generation."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return tokenizer.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True)
