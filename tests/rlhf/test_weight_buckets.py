"""The weight-sync mechanism without Ray: bucket plans, a gloo group of its own between two threads,
merged-LoRA and adapter-only syncs, and packed log-probs equal to padded ones."""

from __future__ import annotations

import socket
import threading

import pytest
import torch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_buckets_respect_the_size_and_align_every_tensor():
    from chimed_ray.distributed.weight_sync import Unit, plan_buckets

    units = [Unit(f"w{i}", (10, 10), "float32", (f"w{i}",)) for i in range(5)]  # 400 bytes each
    units.append(Unit("big", (300,), "float64", ("big",)))  # 2,400 bytes: larger than a bucket, alone
    units.append(Unit("half", (3,), "bfloat16", ("half",)))
    buckets = plan_buckets(units, 1000)
    assert [[slot.name for slot in bucket.slots] for bucket in buckets] == [["w0", "w1"], ["w2", "w3"], ["w4"], ["big"],
                                                                            ["half"]]
    assert [slot.offset for slot in buckets[0].slots] == [0, 448]  # 400 rounded up to the 64-byte alignment
    assert buckets[0].nbytes == 848 and buckets[3].nbytes == 2400


def sync_in_threads(sender_module, receiver_module, lora_sync, scaling, bucket_bytes) -> None:
    """Policy rank 0 and one engine as two threads of this process, over a real gloo group."""
    from chimed_ray.distributed.weight_sync import SyncGroup, WeightSender, receive_buckets

    address, plan, errors = ("127.0.0.1", free_port()), {}, []
    ready = threading.Event()

    def receiver() -> None:
        try:
            group = SyncGroup(address, 1, 2, "gloo")
            ready.wait()
            own = receiver_module.state_dict()

            def load(weights):
                with torch.no_grad():
                    for name, tensor in weights:
                        own[name].copy_(tensor)

            receive_buckets(group, plan["buckets"], "cpu", load)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    thread = threading.Thread(target=receiver)
    thread.start()
    sender = WeightSender(sender_module, False, lora_sync, scaling, bucket_bytes, SyncGroup(address, 0, 2, "gloo"),
                          torch.device("cpu"))
    plan["buckets"] = sender.buckets
    ready.set()
    stats = sender.send()
    thread.join(timeout=60)
    assert not errors, errors
    assert stats.nbytes == sum(bucket.nbytes for bucket in sender.buckets)


@pytest.fixture
def lora_policy(tokenizer):
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.config.common import LoRAConfig
    from chimed_ray.models import build_causal_lm
    from chimed_ray.models.lora import apply_lora

    lora = LoRAConfig(enabled=True, rank=4, alpha=8.0, dropout=0.0)
    policy = apply_lora(build_causal_lm("", TinyModelConfig(), tokenizer, seed=0), lora)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.5)  # a trained adapter (B starts at zero)
    return policy, lora


def test_merged_lora_sync_gives_the_engine_the_merged_weights(tokenizer, lora_policy):
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.models import build_causal_lm
    from chimed_ray.models.lora import lora_scaling, merge_lora_state_dict

    policy, _ = lora_policy
    engine = build_causal_lm("", TinyModelConfig(), tokenizer, seed=1)  # other weights than the policy's base
    sync_in_threads(policy, engine, "merged", lora_scaling(policy), 64 * 1024)
    expected = merge_lora_state_dict(policy.state_dict(), lora_scaling(policy))
    received = engine.state_dict()
    assert set(expected) == set(received)
    for name, tensor in expected.items():
        torch.testing.assert_close(received[name], tensor, msg=name)


def test_adapter_sync_sends_the_adapters_only(tokenizer, lora_policy):
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.distributed.weight_sync import weight_units
    from chimed_ray.models import build_causal_lm
    from chimed_ray.models.lora import apply_lora

    policy, lora = lora_policy
    units = weight_units(policy, "adapter")
    assert units and all(".lora_" in unit.name for unit in units)
    assert sum(unit.nbytes for unit in units) < sum(p.numel() * 4 for p in policy.parameters()) / 5
    engine = apply_lora(build_causal_lm("", TinyModelConfig(), tokenizer, seed=0), lora)  # same base, fresh adapters
    sync_in_threads(policy, engine, "adapter", 1.0, 64 * 1024)
    received = engine.state_dict()
    for name, tensor in policy.state_dict().items():
        torch.testing.assert_close(received[name], tensor, msg=name)


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_packed_logprobs_equal_padded_logprobs(tokenizer, architecture, monkeypatch):
    import chimed_ray.distributed.packing as packing
    from chimed_ray.config import TinyModelConfig
    from chimed_ray.distributed.batch import build_rollout_batch
    from chimed_ray.distributed.forward import response_logprobs
    from chimed_ray.models import build_causal_lm

    model = build_causal_lm("", TinyModelConfig(architecture=architecture), tokenizer, seed=0)
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 500, (int(n),), generator=generator).tolist() for n in (1, 7, 29, 12, 3, 18)]
    answers = [torch.randint(5, 500, (int(n),), generator=generator).tolist() for n in (9, 0, 3, 15, 1, 6)]
    answers[2] += [tokenizer.eos_token_id]
    batch = build_rollout_batch(prompts, answers, list(range(6)), tokenizer.pad_token_id, [tokenizer.eos_token_id])
    assert packing.can_pack(model, batch)
    bins = packing.pack_rows(batch).input_ids  # [K, W]: fewer tokens than the padded batch, no wider
    assert bins.shape[1] <= batch.sequences.shape[1] and bins.numel() < batch.sequences.numel()
    packed, packed_entropy = packing.packed_response_logprobs(model, batch, 0.7, with_entropy=True)
    with monkeypatch.context() as patch:
        patch.setattr(packing, "can_pack", lambda *_: False)  # the padded forward
        padded, padded_entropy = response_logprobs(model, batch, 0.7, with_entropy=True)
    mask = batch.response_mask.bool()
    torch.testing.assert_close(packed[mask], padded[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_entropy[mask], padded_entropy[mask], atol=1e-5, rtol=1e-5)
    assert (packed[~mask] == 0).all()
    # Gradients flow through the packed forward, as the train step needs.
    packing.packed_response_logprobs(model, batch)[0].sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
