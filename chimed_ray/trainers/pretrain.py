"""Stage 1, continued pretraining: medical documents packed into fixed-length blocks, every token
a target. `chimed-ray pretrain --config configs/pretrain/tiny.yaml`"""

from __future__ import annotations

from typing import Sequence

from chimed_ray.config import PretrainConfig
from chimed_ray.data import collate_lm, load_split, pack_documents, to_text
from chimed_ray.data.splits import keys_of
from chimed_ray.trainers.task import StageTask, causal_lm_loss


class PretrainTask(StageTask):
    config_cls = PretrainConfig

    def build_examples(self, config: PretrainConfig, tokenizer) -> tuple[list, list]:
        train, evaluation = load_split(config.data, "pretrain", config.optim.seed)
        keys = keys_of(config.data)

        def blocks(records):
            texts = [to_text(record, config.data.format, keys) for record in records]
            return [(ids, ids) for ids in pack_documents(texts, tokenizer, config.data.max_length)]

        return blocks(train), blocks(evaluation)

    def collate(self, examples: Sequence, tokenizer):
        return collate_lm(examples, tokenizer.pad_token_id)

    def compute_loss(self, model, batch):
        return causal_lm_loss(model, batch)


def main(argv: Sequence[str]) -> int:
    from chimed_ray.config.arguments import parse_stage_config
    from chimed_ray.trainers.launch import run_ray_train

    config, _ = parse_stage_config("pretrain", PretrainConfig, argv)
    run_ray_train("pretrain", config)
    return 0
