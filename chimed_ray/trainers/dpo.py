"""Offline preference optimisation (DPO, IPO, SimPO, ORPO) on the shared Ray Train loop.
`chimed-ray dpo --config configs/dpo/tiny.yaml`

1. Each (prompt, chosen, rejected) pair is tokenized in the ChiMed format; a sequence's
   log-probability counts its answer tokens only.
2. DPO and IPO compare the policy with a frozen reference model. The reference scores every
   train and held-out pair ONCE, before training, in a Ray Data pass over an actor pool; the
   scores are cached in `<output_dir>/reference_logps.jsonl`, keyed by example, and travel with
   the examples, so Ray Train workers never load the reference. SimPO and ORPO skip this step.
3. Each step runs the chosen and rejected answers through one forward pass and applies the
   registered loss; evaluation reports reward margin and accuracy on the held-out pairs.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from chimed_ray.config.dpo import REFERENCE_LOSSES, DPOConfig
from chimed_ray.data import IGNORE_INDEX, PreferencePair, collate_lm, load_split, to_preference, tokenize_dialogue
from chimed_ray.data.splits import keys_of
from chimed_ray.trainers.task import StageTask
from chimed_ray.utils.files import InputError, absolute_path, atomic_write_text

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor

CACHE_NAME = "reference_logps.jsonl"


# ---------------------------------------------------------------------------------------- examples


@dataclass
class PreferenceExample:
    """One tokenized pair; `key` (a hash of its tokens) identifies it in the reference cache."""

    key: str
    chosen: tuple[list[int], list[int]]  # (input_ids, labels), labels IGNORE_INDEX outside the answer
    rejected: tuple[list[int], list[int]]
    reference_chosen_logp: float = math.nan  # summed answer log-probability under the reference
    reference_rejected_logp: float = math.nan


def tokenize_pair(pair: PreferencePair, tokenizer, max_length: int) -> Optional[PreferenceExample]:
    """Tokenize both answers after the shared prompt; None if truncation leaves either without answer tokens."""
    sides = []
    for answer in (pair.chosen, pair.rejected):
        sides.append(tokenize_dialogue(pair.prompt + [{"role": "assistant", "content": answer}], tokenizer, max_length))
    if sides[0] is None or sides[1] is None:
        return None
    key = hashlib.blake2b(json.dumps(sides).encode(), digest_size=12).hexdigest()
    return PreferenceExample(key, sides[0], sides[1])


def build_pairs(config: DPOConfig, tokenizer) -> tuple[list[PreferenceExample], list[PreferenceExample]]:
    """Tokenized (train, held-out) pairs from `config.data` (default: the bundled preference set)."""
    train, evaluation = load_split(config.data, "preference", config.optim.seed)
    keys = keys_of(config.data)

    def examples(records) -> list[PreferenceExample]:
        pairs = (to_preference(record, keys) for record in records)
        tokenized = (tokenize_pair(pair, tokenizer, config.data.max_length) for pair in pairs)
        return [example for example in tokenized if example is not None]

    return examples(train), examples(evaluation)


@dataclass
class PreferenceBatch:
    """Chosen and rejected answers stacked for one forward pass."""

    input_ids: "Tensor"  # [2B, T], the B chosen rows then the B rejected rows
    attention_mask: "Tensor"  # [2B, T]
    labels: "Tensor"  # [2B, T], IGNORE_INDEX outside answers
    reference_chosen_logps: "Tensor"  # [B], NaN for reference-free losses
    reference_rejected_logps: "Tensor"  # [B]

    def to(self, device: "torch.device") -> "PreferenceBatch":
        return PreferenceBatch(*(getattr(self, name).to(device) for name in self.__dataclass_fields__))


def collate_pairs(examples: Sequence[PreferenceExample], pad_token_id: int) -> PreferenceBatch:
    """Right-pad the chosen then the rejected sequences of `examples` into one batch."""
    import torch

    lm = collate_lm([e.chosen for e in examples] + [e.rejected for e in examples], pad_token_id)
    reference_chosen = torch.tensor([e.reference_chosen_logp for e in examples], dtype=torch.float32)
    reference_rejected = torch.tensor([e.reference_rejected_logp for e in examples], dtype=torch.float32)
    return PreferenceBatch(lm.input_ids, lm.attention_mask, lm.labels, reference_chosen, reference_rejected)


# ---------------------------------------------------------------------------------- pure functions


def answer_logprobs(logits: "Tensor", labels: "Tensor") -> tuple["Tensor", "Tensor"]:
    """Summed log-probability of each row's answer tokens, and how many answer tokens it has.

    Args:
        logits: `[N, T, V]` causal-LM logits; position t predicts token t + 1.
        labels: `[N, T]` token ids, IGNORE_INDEX where the token is not part of an answer.

    Returns:
        `([N] float32 sums, [N] integer counts)`.
    """
    from chimed_ray.algorithms import logprobs_from_logits, masked_sum

    targets = labels[:, 1:]  # [N, T-1]
    mask = targets != IGNORE_INDEX
    token_logps = logprobs_from_logits(logits[:, :-1], targets.clamp(min=0))  # [N, T-1]
    return masked_sum(token_logps, mask, dim=1), mask.sum(dim=1)


def pair_loss(
    answer_logp_sums: "Tensor",
    answer_token_counts: "Tensor",
    reference_chosen_logps: "Tensor",
    reference_rejected_logps: "Tensor",
    loss_name: str,
    options: dict[str, Any],
) -> tuple["Tensor", dict[str, "Tensor"]]:
    """The registered preference loss on stacked (chosen, rejected) rows.

    DPO takes summed answer log-probabilities against the reference's; IPO (against the
    reference's, as TRL does), SimPO and ORPO take them averaged over answer tokens, and ORPO
    adds the SFT loss (mean token NLL) on chosen answers.

    Args:
        answer_logp_sums: `[2B]` from `answer_logprobs`, chosen rows first.
        answer_token_counts: `[2B]` answer tokens per row.
        reference_chosen_logps: `[B]` summed reference log-probabilities (ignored when reference-free).
        reference_rejected_logps: `[B]`.
        loss_name: A `PREFERENCE_LOSSES` name.
        options: Its keyword arguments (`PreferenceAlgorithmConfig.loss_options()`).
    """
    from chimed_ray.algorithms import LENGTH_NORMALISED_LOSSES, PREFERENCE_LOSSES

    half = answer_logp_sums.shape[0] // 2
    lengths = answer_token_counts.clamp(min=1).to(answer_logp_sums.dtype)  # [2B]
    if loss_name not in LENGTH_NORMALISED_LOSSES:
        lengths = lengths.new_ones(lengths.shape)
    logps = answer_logp_sums / lengths
    references = (None, None)
    if loss_name in REFERENCE_LOSSES:
        references = (reference_chosen_logps / lengths[:half], reference_rejected_logps / lengths[half:])
    loss, metrics = PREFERENCE_LOSSES.lookup(loss_name)(logps[:half], logps[half:], *references, **options)
    if loss_name == "orpo":
        nll = -answer_logp_sums[:half].sum() / answer_token_counts[:half].sum().clamp(min=1)
        loss = loss + nll
        metrics["nll_loss"] = nll.detach()
    metrics["chosen_logps"] = logps[:half].detach().mean()
    metrics["rejected_logps"] = logps[half:].detach().mean()
    return loss, metrics


# ------------------------------------------------------------------------------------ Ray Train task


class DPOTask(StageTask):
    """Pairs with their cached reference scores in, the registered preference loss out;
    `build_examples` records which loss `compute_loss` applies."""

    config_cls = DPOConfig
    loss_name: str
    loss_options: dict[str, Any]
    plot_keys = ("train/loss", "eval/loss", "eval/reward_margin", "eval/reward_accuracy")

    def build_examples(self, config: DPOConfig, tokenizer) -> tuple[list, list]:
        self.loss_name, self.loss_options = config.algorithm.loss, config.algorithm.loss_options()
        train, evaluation = build_pairs(config, tokenizer)
        if config.algorithm.needs_reference:
            cache = reference_cache_path(config)
            _, scores = read_reference_cache(cache)
            attach_reference_logps(train + evaluation, scores, cache)
        return train, evaluation

    def collate(self, examples: Sequence[PreferenceExample], tokenizer) -> PreferenceBatch:
        return collate_pairs(examples, tokenizer.pad_token_id)

    def compute_loss(self, model, batch: PreferenceBatch):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # [2B, T, V]
        sums, counts = answer_logprobs(logits, batch.labels)
        references = (batch.reference_chosen_logps, batch.reference_rejected_logps)
        loss, metrics = pair_loss(sums, counts, *references, self.loss_name, self.loss_options)
        shown = {"loss": float(loss.detach()), **{key: float(value) for key, value in metrics.items()}}
        return loss, shown, float(batch.reference_chosen_logps.shape[0])


# ----------------------------------------------------------------------------- reference log-probs


def reference_cache_path(config: DPOConfig) -> Path:
    """`reference.cache_file`, default `<output_dir>/reference_logps.jsonl`."""
    return Path(config.reference.cache_file or Path(config.output_dir) / CACHE_NAME)


def reference_identity(config: DPOConfig) -> dict[str, Any]:
    """What the cached scores came from: the checkpoint path and its weight files' sizes and
    times (so overwriting the checkpoint in place invalidates the cache), or the tiny config."""
    path = config.reference.path or config.model.path
    if not path:
        return {"tiny": dict(vars(config.model.tiny)), "seed": config.optim.seed}
    weights = sorted(Path(path).glob("*.safetensors"))
    return {"path": str(path), "weights": [[w.name, w.stat().st_size, w.stat().st_mtime_ns] for w in weights]}


def read_reference_cache(path: Path) -> tuple[Optional[dict], dict[str, tuple[float, float]]]:
    """(identity, {key: (chosen logp, rejected logp)}) from a cache file; (None, {}) if absent."""
    if not path.is_file():
        return None, {}
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        identity = json.loads(lines[0])["reference"]
        rows = [json.loads(line) for line in lines[1:] if line.strip()]
        return identity, {row["key"]: (float(row["chosen"]), float(row["rejected"])) for row in rows}
    except (IndexError, KeyError, ValueError) as exc:
        raise InputError(f"{path}: not a reference log-probability cache ({exc}); delete it to rescore") from None


def write_reference_cache(path: Path, identity: dict, scores: dict[str, tuple[float, float]]) -> None:
    """Atomically write the cache: a header line naming the reference, then one line per pair."""
    lines = [json.dumps({"reference": identity})]
    lines += [json.dumps({"key": key, "chosen": c, "rejected": r}) for key, (c, r) in sorted(scores.items())]
    atomic_write_text(path, "\n".join(lines) + "\n")


def attach_reference_logps(
    examples: list[PreferenceExample], scores: dict[str, tuple[float, float]], cache: Path
) -> None:
    """Fill each example's reference log-probabilities from the cache, in place."""
    missing = [e.key for e in examples if e.key not in scores]
    if missing:
        raise InputError(
            f"{cache}: no reference log-probabilities for {len(missing)} of {len(examples)} pairs "
            f"(e.g. key {missing[0]}); run `chimed-ray dpo`, which scores the reference model before training"
        )
    for example in examples:
        example.reference_chosen_logp, example.reference_rejected_logp = scores[example.key]


class ReferenceScorer:
    """Ray Data actor holding the frozen reference model; scores a batch of pairs."""

    def __init__(self, model: dict[str, Any], tokenizer_path: str, precision: str, seed: int, use_gpu: bool) -> None:
        import torch

        from chimed_ray.config import ModelConfig, from_dict
        from chimed_ray.models import build_causal_lm, load_tokenizer

        spec = from_dict(ModelConfig, model)
        tokenizer = load_tokenizer(tokenizer_path, spec.trust_remote_code)
        self.pad_token_id = tokenizer.pad_token_id
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.model = build_causal_lm(
            spec.path, spec.tiny, tokenizer, precision, spec.trust_remote_code, spec.attn_implementation, seed
        ).to(self.device).eval()

    def __call__(self, batch: dict[str, "np.ndarray"]) -> dict[str, "np.ndarray"]:
        import torch

        rows = [(list(ids), list(labels)) for ids, labels in zip(batch["chosen_ids"], batch["chosen_labels"])]
        rows += [(list(ids), list(labels)) for ids, labels in zip(batch["rejected_ids"], batch["rejected_labels"])]
        lm = collate_lm(rows, self.pad_token_id).to(self.device)
        with torch.no_grad():
            logits = self.model(input_ids=lm.input_ids, attention_mask=lm.attention_mask).logits
            sums, _ = answer_logprobs(logits, lm.labels)
        half = len(batch["key"])
        return {"key": batch["key"], "chosen": sums[:half].cpu().numpy(), "rejected": sums[half:].cpu().numpy()}


def score_reference(examples: Sequence[PreferenceExample], config: DPOConfig) -> dict[str, tuple[float, float]]:
    """Reference log-probabilities of `examples` from a Ray Data pass over a pool of `ReferenceScorer`s."""
    import ray.data

    from chimed_ray.config import to_dict

    scale = config.scale
    items = [
        {"key": e.key, "chosen_ids": e.chosen[0], "chosen_labels": e.chosen[1],
         "rejected_ids": e.rejected[0], "rejected_labels": e.rejected[1]}
        for e in examples
    ]
    reference_model = replace(config.model, path=config.reference.path or config.model.path)
    actors = min(config.reference.num_actors or scale.num_workers, len(items))
    # Blocks of ~256 pairs: Ray Data's default of one block per item or two costs a task each.
    blocks = max(actors, math.ceil(len(items) / 256))
    scored = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        ReferenceScorer,
        fn_constructor_kwargs={
            "model": to_dict(reference_model),
            "tokenizer_path": config.model.tokenizer_path or config.model.path,
            "precision": scale.resolved_precision(),
            "seed": config.optim.seed,
            "use_gpu": scale.use_gpu,
        },
        batch_size=config.reference.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=scale.cpus_per_worker,
        num_gpus=scale.gpus_per_worker if scale.use_gpu else 0,
    )
    return {str(row["key"]): (float(row["chosen"]), float(row["rejected"])) for row in scored.take_all()}


def ensure_reference_logps(config: DPOConfig) -> tuple[Path, int]:
    """Score every train and held-out pair the cache lacks (all of them if the reference changed).

    Returns:
        `(cache file, number of pairs scored now)`; 0 means the cache was reused as is.
    """
    from chimed_ray.models import load_tokenizer

    tokenizer = load_tokenizer(config.model.tokenizer_path or config.model.path, config.model.trust_remote_code)
    train, evaluation = build_pairs(config, tokenizer)
    cache, identity = reference_cache_path(config), reference_identity(config)
    cached_identity, scores = read_reference_cache(cache)
    if cached_identity != identity:
        scores = {}
    missing = list({e.key: e for e in train + evaluation if e.key not in scores}.values())
    if missing:
        scores.update(score_reference(missing, config))
        write_reference_cache(cache, identity, scores)
    return cache, len(missing)


# ------------------------------------------------------------------------------------------- driver


def resolve_reference(config: DPOConfig) -> DPOConfig:
    """The config with the reference path (default `model.path`) and cache file made absolute."""
    from chimed_ray.trainers.launch import resolve_paths

    config = resolve_paths(config)
    reference = replace(
        config.reference,
        path=absolute_path(config.reference.path or config.model.path),
        cache_file=absolute_path(str(reference_cache_path(config))),
    )
    return replace(config, reference=reference)


def run_dpo(config: DPOConfig) -> Path:
    """Score the reference once (DPO/IPO), train on Ray Train, and print the held-out margins.

    Returns:
        `<output_dir>/final`, the HF checkpoint of the last step.
    """
    from chimed_ray.planning.check import check_memory
    from chimed_ray.trainers.launch import ensure_ray, run_ray_train
    from chimed_ray.utils.tracking import read_metrics

    config = resolve_reference(config)
    check_memory("dpo", config)  # before the reference actors start; run_ray_train checks again (same plan)
    if config.algorithm.needs_reference:
        ensure_ray()
        cache, scored = ensure_reference_logps(config)
        print(f"[chimed-ray dpo] reference log-probabilities: {cache} ({scored} pairs scored now)", flush=True)
    final = run_ray_train("dpo", config)
    held_out = [r for r in read_metrics(Path(config.output_dir) / "metrics.jsonl") if "eval/reward_margin" in r]
    if held_out:
        last = held_out[-1]
        print(
            f"[chimed-ray dpo] held-out pairs at step {last['step']}: reward margin "
            f"{last['eval/reward_margin']:.4f}, accuracy {last['eval/reward_accuracy']:.3f}",
            flush=True,
        )
    return final


def main(argv: Sequence[str]) -> int:
    from chimed_ray.config.arguments import parse_stage_config

    config, _ = parse_stage_config("dpo", DPOConfig, argv)
    run_dpo(config)
    return 0
