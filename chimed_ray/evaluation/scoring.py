"""Model backends that answer `EvalRequest`s.

* `HFScorer`: a local HF causal LM. Option requests take one batched forward pass over left-padded
  prompts and read the next-token log-probabilities of each option label; generation requests go
  through the rollout `HFEngine` (batched, greedy), the same generation code PPO uses. Prompts go
  through the tokenizer's chat template (ChiMed's `[human]:...\\n[bot]:` for our checkpoints).
* `OpenAIBackend`: any OpenAI-compatible chat endpoint, for generation requests only (option
  scoring needs the full next-token distribution, which chat endpoints do not expose reliably).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from chimed_ray.evaluation.records import EvalRequest, EvalResponse


def _batches(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]


class HFScorer:
    """A local causal LM answering option-scoring and generation requests in batches.

    Args:
        model_path: HF checkpoint directory holding the model and its tokenizer.
        precision: fp32, bf16 or fp16.
        max_prompt_length: prompts are cut to their last this-many tokens (the question and the
            `[bot]:` tag sit at the end, so the left is what can go).
        device: torch device; default cuda when available, else cpu.
    """

    def __init__(self, model_path: str, precision: str = "fp32", max_prompt_length: int = 2048,
                 device: str | None = None) -> None:
        import torch

        from chimed_ray.distributed.policy import eos_token_ids
        from chimed_ray.models import load_causal_lm, load_tokenizer
        from chimed_ray.rollout.hf_engine import HFEngine

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(model_path)
        self.max_prompt_length = max_prompt_length
        self.model = load_causal_lm(model_path, precision).to(self.device).eval()
        self.engine = HFEngine(self.model, eos_token_ids(self.tokenizer), self.tokenizer.pad_token_id)
        self._label_ids: dict[tuple[str, str], int] = {}

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt string for chat `messages`, ending where the assistant's answer starts."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prompt_ids(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of `prompts`, each cut to its last `max_prompt_length` tokens."""
        return [self.tokenizer.encode(p, add_special_tokens=False)[-self.max_prompt_length:] for p in prompts]

    def label_token_id(self, prompt: str, label: str) -> int:
        """Id of the first token of `label` as it is tokenized right after `prompt`.

        SentencePiece tokenizers give a bare `"A"` a word-start piece (`▁A`) that never follows
        `[bot]:`, so the label is tokenized in context (after the prompt's last characters).
        """
        context = prompt[-16:]
        key = (context, label)
        if key not in self._label_ids:
            encode = self.tokenizer.encode
            before = encode(context, add_special_tokens=False)
            after = encode(context + label, add_special_tokens=False)
            if after[: len(before)] == before and len(after) > len(before):
                self._label_ids[key] = after[len(before)]
            else:
                self._label_ids[key] = encode(label, add_special_tokens=False)[0]
        return self._label_ids[key]

    def option_logprobs(self, prompts: list[str], options: list[list[str]]) -> list[list[float]]:
        """Next-token log-probabilities (normalised over the whole vocabulary) of each option label.

        Raises:
            ValueError: two labels of one request start with the same token.
        """
        import torch

        label_ids = []
        for prompt, labels in zip(prompts, options):
            ids = [self.label_token_id(prompt, label) for label in labels]
            if len(set(ids)) != len(ids):
                raise ValueError(f"option labels {labels} do not map to distinct first tokens ({ids})")
            label_ids.append(ids)
        from chimed_ray.data.padding import left_pad

        input_ids, attention_mask = left_pad(self.prompt_ids(prompts), self.tokenizer.pad_token_id, self.device)
        # Left padding: count positions over real tokens, as an unpadded prompt would see them.
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, P]
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits
            logprobs = torch.log_softmax(logits[:, -1, :].float(), dim=-1)  # [B, V]
        return [[logprobs[row, i].item() for i in ids] for row, ids in enumerate(label_ids)]

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy completions of `prompts` in one batch (special tokens dropped)."""
        from chimed_ray.rollout.base import SamplingParams

        answers = self.engine.generate(self.prompt_ids(prompts), SamplingParams(max_new_tokens, greedy=True))
        return self.tokenizer.batch_decode(answers, skip_special_tokens=True)

    def run(self, requests: list[EvalRequest], batch_size: int,
            on_done: Callable[[int], None] | None = None) -> list[EvalResponse]:
        """Answer `requests` (any mix of kinds) in batches of similar length; order is kept.

        `on_done(n)` is called after each batch of `n` requests (progress bars).
        """
        prompts = {r.uid: self.render(r.messages) for r in requests}
        answers: dict[str, EvalResponse] = {}
        for kind in ("choice", "generate"):
            group = sorted((r for r in requests if r.kind == kind), key=lambda r: len(prompts[r.uid]))
            for chunk in _batches(group, batch_size):
                texts = [prompts[r.uid] for r in chunk]
                if kind == "choice":
                    scores = self.option_logprobs(texts, [r.options for r in chunk])
                    answers.update({r.uid: EvalResponse(r.uid, option_logprobs=s) for r, s in zip(chunk, scores)})
                else:
                    outputs = self.generate(texts, max(r.max_new_tokens for r in chunk))
                    answers.update({r.uid: EvalResponse(r.uid, text=t) for r, t in zip(chunk, outputs)})
                if on_done is not None:
                    on_done(len(chunk))
        return [answers[r.uid] for r in requests]


class OpenAIBackend:
    """Greedy chat completions from an OpenAI-compatible endpoint, `max_concurrency` at a time."""

    def __init__(self, base_url: str, model: str, api_key: str, max_concurrency: int = 8,
                 timeout: float = 120.0) -> None:
        from openai import OpenAI

        # Local servers (Ray Serve, vLLM) accept any key, but the client insists on one.
        self.client = OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=2)
        self.model = model
        self.max_concurrency = max_concurrency

    def complete(self, request: EvalRequest) -> EvalResponse:
        if request.options:
            raise ValueError(f"{request.uid}: an OpenAI endpoint cannot score options, only generate")
        reply = self.client.chat.completions.create(
            model=self.model, messages=request.messages, max_tokens=request.max_new_tokens, temperature=0.0,
        )
        return EvalResponse(request.uid, text=reply.choices[0].message.content or "")

    def run(self, requests: list[EvalRequest], on_done: Callable[[int], None] | None = None) -> list[EvalResponse]:
        """Answer `requests` concurrently; `on_done(1)` is called as each finishes (progress bars)."""

        def one(request: EvalRequest) -> EvalResponse:
            response = self.complete(request)
            if on_done is not None:
                on_done(1)
            return response

        with ThreadPoolExecutor(self.max_concurrency) as pool:
            return list(pool.map(one, requests))
