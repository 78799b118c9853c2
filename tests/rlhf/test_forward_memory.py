"""What the PPO forward keeps for backward: the chunked log-prob saves no float32 copy of the
logits, and the entropy keeps no graph when its coefficient is 0."""

from __future__ import annotations

import torch

from chimed_ray.algorithms import entropy_from_logits, logprobs_from_logits


def saved_bytes(function, inputs: list[torch.Tensor]) -> int:
    """Bytes autograd saves for backward while running `function`, not counting `inputs` storages."""
    own = {tensor.untyped_storage().data_ptr() for tensor in inputs}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        function()
    return sum(seen.values())


def test_chunked_logprobs_match_log_softmax_and_save_no_float32_logits():
    torch.manual_seed(0)
    logits = torch.randn(4, 16, 1000, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 1000, (4, 16))
    weights = torch.randn(4, 16, dtype=torch.float64)
    ours = logprobs_from_logits(logits, labels, chunk_size=7)
    reference = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(ours.double(), reference, rtol=1e-6, atol=1e-6)
    (ours_grad,) = torch.autograd.grad((ours * weights).sum(), logits)
    (reference_grad,) = torch.autograd.grad((reference * weights).sum(), logits)
    torch.testing.assert_close(ours_grad, reference_grad, rtol=1e-6, atol=1e-7)

    bf16 = torch.randn(64, 1000, dtype=torch.bfloat16, requires_grad=True)
    rows = torch.randint(0, 1000, (64,))
    float32_logits = 64 * 1000 * 4
    kept = saved_bytes(lambda: logprobs_from_logits(bf16, rows, chunk_size=8), [bf16, rows])
    assert kept <= 64 * 4  # the [N] float32 log-normalisers only
    naive = saved_bytes(lambda: torch.log_softmax(bf16.float(), -1).gather(-1, rows[:, None]), [bf16, rows])
    assert naive >= float32_logits  # what the chunking avoids


def test_entropy_without_coefficient_keeps_no_graph():
    from chimed_ray.distributed.forward import response_logprobs

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(50, 50)

        def forward(self, input_ids, logits_to_keep, **_):
            return type("Output", (), {"logits": self.embed(input_ids)[:, -logits_to_keep:]})

    from chimed_ray.distributed.batch import build_rollout_batch

    batch = build_rollout_batch([[1, 2, 3]], [[4, 5, 6]], [0], 0, [49])
    model = Tiny()
    _, entropy = response_logprobs(model, batch, with_entropy=True, entropy_grad=False)
    assert not entropy.requires_grad
    logprobs, entropy = response_logprobs(model, batch, with_entropy=True, entropy_grad=True)
    assert entropy.requires_grad and logprobs.requires_grad
    torch.testing.assert_close(entropy, entropy_from_logits(model.embed(batch.sequences)[:, -4:-1]))
