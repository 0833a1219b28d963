"""Text generation from prompts with the LM's key/value cache: greedy, or sampling with
a temperature, top-k and top-p (nucleus), and a repeat penalty.

The steps, in order: repeat penalty on the logits (CTRL's, the one beam search uses),
then greedy argmax when temperature == 0; otherwise divide by the temperature, keep
the top-k, keep the top-p nucleus, and draw from what is left.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field

from speechforge import registry
from speechforge.data.tokenizers import EOS, PAD, SOS
from speechforge.decode.beam import repeat_penalised


def top_k_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(N, V) True at each row's k largest logits (all of them when k is 0 or >= V)."""
    if k <= 0 or k >= logits.shape[-1]:
        return torch.ones_like(logits, dtype=torch.bool)
    kth = logits.topk(k, dim=-1).values[:, -1:]
    return logits >= kth


def top_p_mask(logits: torch.Tensor, p: float) -> torch.Tensor:
    """(N, V) True on the nucleus (Holtzman et al. 2020): the smallest set of most likely
    tokens whose probability adds up to at least p. A token is in it when the mass of
    the tokens more likely than it is still below p."""
    if p >= 1.0:
        return torch.ones_like(logits, dtype=torch.bool)
    probs, order = logits.float().softmax(-1).sort(-1, descending=True)
    before = probs.cumsum(-1) - probs
    return torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, before < p)


def token_probs(
    logits: torch.Tensor,  # (N, V)
    seen: torch.Tensor | None,  # (N, V) True at tokens already in the sequence
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    repeat_penalty: float = 1.0,
) -> torch.Tensor:
    """(N, V) the distribution the next token is drawn from (one-hot when greedy)."""
    logits = logits.float()
    if seen is not None and repeat_penalty != 1.0:
        logits = repeat_penalised(logits, seen, repeat_penalty)
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(1, logits.argmax(-1, keepdim=True), 1.0)
    logits = logits / temperature
    keep = top_k_mask(logits, top_k) & top_p_mask(logits, top_p)
    # -inf, not a large negative: the dropped tokens must have probability exactly 0
    return logits.masked_fill(~keep, float("-inf")).softmax(-1)


def next_tokens(logits: torch.Tensor, seen: torch.Tensor | None, temperature: float, top_k: int, top_p: float,
                repeat_penalty: float, generator: torch.Generator | None) -> torch.Tensor:
    probs = token_probs(logits, seen, temperature, top_k, top_p, repeat_penalty)
    if temperature == 0:
        return probs.argmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.no_grad()
def generate(
    model,
    prompt: torch.Tensor,  # (B, P) <sos> + prompt tokens, PAD after
    prompt_lens: torch.Tensor,  # (B,) <sos> included, >= 1
    max_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repeat_penalty: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Continue each prompt by up to ``max_tokens`` tokens, stopping at <eos>.

    Returns (B, max_tokens) new tokens, <eos> after the end, and (B,) their counts
    (<eos> excluded). Prompts of different lengths share one batch: the shortest
    common part goes through in one call, then each row is fed its own prompt tokens
    until they run out, and its choices after that."""
    b, dev = prompt.shape[0], prompt.device
    prompt_lens = prompt_lens.to(dev)
    rows = torch.arange(b, device=dev)
    state = model.init_state(b)
    pos = int(prompt_lens.min())
    logits = model.step(prompt[:, :pos], state)
    seen = None
    if repeat_penalty != 1.0:
        in_prompt = torch.arange(prompt.shape[1], device=dev)[None, :] < prompt_lens[:, None]
        seen = torch.zeros(b, logits.shape[-1], dtype=torch.bool, device=dev)
        seen.scatter_(1, prompt.masked_fill(~in_prompt, PAD), in_prompt)
        seen[:, PAD] = False
    out = torch.full((b, max_tokens), EOS, dtype=torch.long, device=dev)
    count = torch.zeros(b, dtype=torch.long, device=dev)
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    while max_tokens > 0:
        chosen = next_tokens(logits, seen, temperature, top_k, top_p, repeat_penalty, generator)
        forced = pos < prompt_lens
        token = torch.where(forced, prompt[:, min(pos, prompt.shape[1] - 1)], chosen)
        new = ~forced & ~done
        out[rows[new], count[new]] = token[new]
        count += new.long()
        done |= new & ((token == EOS) | (count >= max_tokens))
        if bool(done.all()):
            break
        if seen is not None:
            seen[rows, token] = True
        logits = model.step(token, state)
        pos += 1
    lengths = torch.where(out == EOS, torch.arange(max_tokens, device=dev), max_tokens).min(1).values
    return out, lengths


class Sampler:
    """The registered generator: prompts as text in, completions as text out."""

    def __init__(self, prompts: list[str], num_samples: int, seed: int, **options: Any):
        self.prompts, self.num_samples, self.seed, self.options = prompts, num_samples, seed, options

    def __call__(self, model, tokenizer) -> list[dict[str, Any]]:
        dev = next(model.parameters()).device
        encoded = [[SOS, *tokenizer.encode(p)] for p in self.prompts for _ in range(self.num_samples)]
        lens = torch.tensor([len(ids) for ids in encoded])
        prompt = torch.full((len(encoded), int(lens.max())), PAD, dtype=torch.long)
        for i, ids in enumerate(encoded):
            prompt[i, : len(ids)] = torch.tensor(ids)
        gen = torch.Generator(device=dev).manual_seed(self.seed)
        was_training = model.training
        model.eval()
        tokens, counts = generate(model, prompt.to(dev), lens, generator=gen, **self.options)
        model.train(was_training)
        out = []
        for i, ids in enumerate(encoded):
            new = tokens[i, : int(counts[i])].tolist()
            # decode prompt and continuation together: subword pieces own their spaces
            out.append({"prompt": self.prompts[i // self.num_samples], "text": tokenizer.decode(ids + new),
                        "new_tokens": len(new), "ended": bool(counts[i] < tokens.shape[1])})
        return out


@registry.generators.register("sample")
def sample(
    prompts: list[str],
    max_tokens: Annotated[int, Field(ge=1)] = 100,
    temperature: Annotated[float, Field(ge=0.0)] = 1.0,
    top_k: Annotated[int, Field(ge=0)] = 0,
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0,
    repeat_penalty: Annotated[float, Field(ge=1.0)] = 1.0,
    num_samples: Annotated[int, Field(ge=1)] = 1,
    seed: int = 0,
) -> Sampler:
    """Continue prompts: greedy when temperature = 0, else sampling (top_k 0 and top_p 1 turn those off)."""
    return Sampler(prompts, num_samples, seed, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                   top_p=top_p, repeat_penalty=repeat_penalty)
