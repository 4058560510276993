"""Post-train a real model on GSM8K with TRL and any algorithm of the book (ch. 13). Needs GPUs:

    accelerate launch --num_processes 8 -m xxpo_lab.integrations.gsm8k_trl --algorithm SAPO \\
        --model Qwen/Qwen2.5-0.5B-Instruct --use-vllm

The algorithm's native TRL settings come from the crosswalk (`crosswalk.RECIPES`); an algorithm TRL lacks runs the
lab's loss through `LabGRPOTrainer`. The sizes are a 0.5B model's on one node of 8 GPUs: 16 completions per GPU per
micro-batch, 4 micro-batches accumulated per optimizer step (16 × 8 × 4 = 512 completions, 64 prompts × 8), vLLM
sampling in the training processes (colocate) with TRL's importance-sampling correction of the sampler/trainer
mismatch (ch. 10), turned off for losses that weight by the sampler themselves. `--cpu` runs the same script on
a CPU with a tiny model (the tests do, with a local dataset file).
"""

from __future__ import annotations

import argparse
import re

from xxpo_lab.integrations import require
from xxpo_lab.integrations.crosswalk import recipe
from xxpo_lab.losses import get_loss

INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
"""verl's GSM8K instruction (examples/data_preprocess/gsm8k.py), so the two engines train on the same prompts."""


def final_number(text: str) -> str | None:
    """The answer a response gives: the number after the last '####', else its last number (commas dropped)."""
    tail = text.rsplit("####", 1)[-1] if "####" in text else text
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", tail)
    return numbers[-1].replace(",", "").rstrip(".") if numbers else None


def gsm8k_reward(completions, answer, **kwargs) -> list[float]:
    """1 when the response's final number equals the reference answer (GSM8K's text after '####'), else 0."""
    out = []
    for completion, reference in zip(completions, answer):
        text = completion[0]["content"] if isinstance(completion, list) else completion
        out.append(float(final_number(text) == final_number(reference)))
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algorithm", default="GRPO", help="a row of the crosswalk: GRPO, DAPO, GSPO, SAPO, A-3PO, ...")
    p.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct")
    p.add_argument("--dataset", default="openai/gsm8k", help="a hub name (config 'main') or a local json/parquet file")
    p.add_argument("--output-dir", default="runs/gsm8k")
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--per-device-batch", type=int, default=16)
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--max-completion-length", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--use-vllm", action="store_true")
    p.add_argument("--cpu", action="store_true", help="CPU, float32, no gradient checkpointing (tests)")
    return p.parse_args(argv)


def load(dataset: str, tokenizer):
    """GSM8K's train split as TRL prompts: conversational when the model has a chat template."""
    datasets = require("datasets", "trl")
    if dataset.endswith((".json", ".jsonl", ".parquet")):
        data = datasets.load_dataset(dataset.rsplit(".", 1)[-1].replace("jsonl", "json"), data_files=dataset)
    else:
        data = datasets.load_dataset(dataset, "main")
    chat = tokenizer.chat_template is not None

    def to_prompt(row):
        text = f"{row['question']} {INSTRUCTION}"
        return {"prompt": [{"role": "user", "content": text}] if chat else f"Question: {text}\nAnswer:"}

    return data["train"].map(to_prompt)


def main(argv=None) -> None:
    a = parse_args(argv)
    r = recipe(a.algorithm)
    trl = require("trl", "trl")
    transformers = require("transformers", "trl")
    from xxpo_lab.integrations.trl import LabGRPOTrainer

    tokenizer = transformers.AutoTokenizer.from_pretrained(a.model)
    lab_loss = None if r.trl is not None else r.loss  # TRL lacks it: the lab's loss
    spec = get_loss(r.loss)
    # TRL's sampler correction multiplies each token's loss: only for losses linear in A
    # that do not weight by the sampler themselves
    correct = lab_loss is None or (
        spec.linear and not spec.own_is and spec.prox != "recompute")
    args = trl.GRPOConfig(
        output_dir=a.output_dir, max_steps=a.max_steps, learning_rate=a.lr,
        lr_scheduler_type="constant",
        per_device_train_batch_size=a.per_device_batch,
        gradient_accumulation_steps=a.grad_accum,
        num_generations=a.num_generations,
        max_completion_length=a.max_completion_length,
        bf16=not a.cpu, use_cpu=a.cpu, gradient_checkpointing=not a.cpu,
        use_vllm=a.use_vllm, vllm_mode="colocate",
        vllm_importance_sampling_correction=correct,
        logging_steps=1 if a.cpu else 10, save_strategy="no" if a.cpu else "steps",
        report_to=[], **(r.trl or {}))
    kwargs = {"model": a.model, "reward_funcs": gsm8k_reward, "args": args,
              "train_dataset": load(a.dataset, tokenizer),
              "processing_class": tokenizer}
    if lab_loss is None:
        trainer = trl.GRPOTrainer(**kwargs)
    else:
        trainer = LabGRPOTrainer(**kwargs, lab_loss=lab_loss,
                                 lab_config=r.loss_fields())
    trainer.train()


if __name__ == "__main__":
    main()
