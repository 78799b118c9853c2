"""Stage 2, supervised fine-tuning on medical QA and doctor-patient dialogues in the ChiMed
`[human]:...\\n[bot]:...` format, loss on every answer turn only.
`chimed-ray sft --config configs/sft/tiny.yaml`"""

from __future__ import annotations

from typing import Sequence

from chimed_ray.config import SFTConfig
from chimed_ray.data import collate_lm, load_split, pack_examples, to_messages, tokenize_dialogue
from chimed_ray.data.splits import keys_of
from chimed_ray.trainers.task import StageTask, causal_lm_loss


class SFTTask(StageTask):
    config_cls = SFTConfig

    def build_examples(self, config: SFTConfig, tokenizer) -> tuple[list, list]:
        train, evaluation = load_split(config.data, "sft", config.optim.seed)
        keys = keys_of(config.data)

        def examples(records):
            out = []
            for record in records:
                messages = to_messages(record, config.data.format, keys)
                example = tokenize_dialogue(messages, tokenizer, config.data.max_length, config.train_on_prompt)
                if example is not None:
                    out.append(example)
            return pack_examples(out, config.data.max_length) if config.packing else out

        return examples(train), examples(evaluation)

    def collate(self, examples: Sequence, tokenizer):
        return collate_lm(examples, tokenizer.pad_token_id)

    def compute_loss(self, model, batch):
        return causal_lm_loss(model, batch)


def main(argv: Sequence[str]) -> int:
    from chimed_ray.config.arguments import parse_stage_config
    from chimed_ray.trainers.launch import run_ray_train

    config, _ = parse_stage_config("sft", SFTConfig, argv)
    run_ray_train("sft", config)
    return 0
