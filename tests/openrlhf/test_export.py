"""What OpenRLHF reads from us: its own PromptDataset yields our prompts token for token, the model
it loads carries the ChiMed chat template, and its final save comes back as safetensors."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest


def tiny_config(checkpoint: Path, output: Path, *overrides: str):
    from chimed_ray.config import load_config
    from chimed_ray.config.rlhf import PPOConfig

    return load_config(PPOConfig, None, [f"model.path={checkpoint}", f"output_dir={output}", "reward.path=/rm",
                                         "engine=openrlhf", "scale.use_gpu=true", "total_steps=3",
                                         "rollout.prompts_per_step=4", "algorithm.mini_batch_size=4", *overrides])


def openrlhf_prompts(prompts_file: Path, actor_dir: Path) -> list[list[int]]:
    """Prompt token ids as OpenRLHF 0.11 builds them: blending_datasets -> PromptDataset with
    --data.apply_chat_template and the actor's tokenizer -> `tokenizer(prompt, add_special_tokens=False)`."""
    from openrlhf.datasets import PromptDataset
    from openrlhf.datasets.utils import blending_datasets
    from openrlhf.utils.utils import get_tokenizer

    args = SimpleNamespace(data=SimpleNamespace(input_key="input", label_key=None, apply_chat_template=True,
                                                image_key="images"))
    strategy = SimpleNamespace(args=args, print=lambda *_: None, is_rank_0=lambda: True)
    data = blending_datasets(str(prompts_file), None, strategy)
    tokenizer = get_tokenizer(str(actor_dir), None, "left", strategy)
    dataset = PromptDataset(data, tokenizer, strategy)
    return [tokenizer(text=dataset[i][1], add_special_tokens=False)["input_ids"] for i in range(len(dataset))]


def exported_for(checkpoint: Path, tmp_path: Path, max_prompt_length: int):
    """`(config, tokenizer, ExportedPrompts, actor_dir)` of the tiny run, exported as the stage does."""
    pytest.importorskip("openrlhf.datasets", reason="dev install: pip install --no-deps openrlhf==0.11.2 pylatexenc")
    from chimed_ray.integrations.openrlhf.export import chimed_tokenizer, export_prompts, handover_model

    config = tiny_config(checkpoint, tmp_path / "ppo", f"rollout.max_prompt_length={max_prompt_length}")
    tokenizer = chimed_tokenizer(config)
    exported = export_prompts(config, tokenizer, tmp_path / "prompts.jsonl")
    return config, tokenizer, exported, handover_model(config.model.path, tokenizer, tmp_path / "actor")


def test_openrlhf_prompt_dataset_yields_our_prompts_token_for_token(tiny_checkpoint, tmp_path):
    from chimed_ray.rollout.prompts import load_prompts
    from chimed_ray.trainers.ppo_state import PromptOrder

    config, tokenizer, exported, actor = exported_for(tiny_checkpoint, tmp_path, 256)
    assert exported.count == 12 and exported.shortened == 0

    ours = load_prompts(config.data, tokenizer, 256, config.data.max_samples)
    order = PromptOrder(len(ours), config.optim.seed).take(0, 12)
    theirs = openrlhf_prompts(exported.path, actor)
    assert theirs == [ours[index].token_ids for index in order]
    assert tokenizer.decode(theirs[0]).startswith("[human]:") and tokenizer.decode(theirs[0]).endswith("[bot]:")
    # The weights are linked, not copied, and the template is ChiMed's even if the checkpoint had another.
    assert (actor / "model.safetensors").is_symlink()
    assert "[human]:" in (actor / "chat_template.jinja").read_text(encoding="utf-8")


def test_long_prompts_are_shortened_from_the_start_of_the_question(tiny_checkpoint, tmp_path):
    _, tokenizer, exported, actor = exported_for(tiny_checkpoint, tmp_path, 12)
    assert exported.shortened > 0
    bot = tokenizer("[bot]:", add_special_tokens=False)["input_ids"]
    for ids in openrlhf_prompts(exported.path, actor):
        assert len(ids) <= 12 and ids[-len(bot):] == bot
    first = json.loads(exported.path.read_text(encoding="utf-8").splitlines()[0])
    assert first["input"][-1]["role"] == "user"


def test_openrlhf_final_save_is_imported_as_safetensors(tiny_checkpoint, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from chimed_ray.integrations.openrlhf.export import chimed_tokenizer
    from chimed_ray.integrations.openrlhf.job import import_checkpoint

    # An OpenRLHF save in the older pytorch_model.bin layout.
    saved = tmp_path / "openrlhf" / "hf"
    saved.mkdir(parents=True)
    state = load_file(str(tiny_checkpoint / "model.safetensors"))
    torch.save(state, saved / "pytorch_model.bin")
    (saved / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    config = tiny_config(tiny_checkpoint, tmp_path / "ppo")
    final = import_checkpoint(saved, str(tiny_checkpoint), chimed_tokenizer(config), tmp_path / "ppo" / "final")
    assert not list(final.glob("*.bin")) and (final / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(str(final))
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in state.items() if name in model.state_dict())
    assert "[human]:" in (final / "chat_template.jinja").read_text(encoding="utf-8")


def test_a_cluster_without_gpus_is_refused_before_anything_is_written(ray_cluster, tiny_checkpoint, tmp_path):
    from chimed_ray.config import ConfigError
    from chimed_ray.integrations.openrlhf import run_openrlhf_ppo

    config = tiny_config(tiny_checkpoint, tmp_path / "ppo")
    with pytest.raises(ConfigError, match="^engine=openrlhf: this Ray cluster has no GPUs"):
        run_openrlhf_ppo(config, echo=lambda line: None)
    assert not (tmp_path / "ppo").exists()


def test_a_lora_run_s_adapter_is_merged_into_the_final_model(tiny_checkpoint, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from chimed_ray.integrations.openrlhf.export import chimed_tokenizer
    from chimed_ray.integrations.openrlhf.job import import_checkpoint

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint)),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False))
    saved = tmp_path / "hf"
    peft_model.save_pretrained(str(saved))  # what OpenRLHF's save leaves for a LoRA actor: the adapter
    expected = peft_model.merge_and_unload().state_dict()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint)).state_dict()
    config = tiny_config(tiny_checkpoint, tmp_path / "ppo")
    final = import_checkpoint(saved, str(tiny_checkpoint), chimed_tokenizer(config), tmp_path / "ppo" / "final")
    merged = AutoModelForCausalLM.from_pretrained(str(final)).state_dict()
    assert (final / "adapter" / "adapter_config.json").is_file() and list(final.glob("*.safetensors"))
    changed = [name for name in expected if "q_proj" in name]
    assert changed and all(torch.allclose(merged[name], expected[name], atol=1e-6) for name in changed)
    assert not torch.allclose(merged[changed[0]], base[changed[0]])
