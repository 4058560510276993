"""The same loss in three engines (ch. 13): the lab's function, TRL's `GRPOTrainer` and verl's policy-loss call,
on one batch of the lab's policy; and a lab task trained by TRL's trainer (the policy and the verifier are the
lab's, sampling, scoring and the update loop are TRL's).

Each engine gets the recipe's settings from the crosswalk (`crosswalk.RECIPES`) and computes its own loss;
each gradient reaches the policy's parameters the way the engine does it: the lab and TRL by autograd through
their own forward pass, verl by backpropagating its d loss / d logp through the policy (verl's actor does the
same through its model). verl runs in its own environment (`verl_python`), as a subprocess.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import os
import random
import subprocess
import sys
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from xxpo_lab.config import Config, resolve
from xxpo_lab.integrations import require
from xxpo_lab.integrations.crosswalk import Recipe, recipe, verl_actor_fields
from xxpo_lab.losses import LOSSES
from xxpo_lab.policy import accuracy, make_policy, pick_device, token_logp
from xxpo_lab.tasks import Problem, make_task


@contextlib.contextmanager
def quiet():
    """Silence the engines' own deprecation notices and advisories (transformers 5 renamed gradient_checkpointing,
    which TRL still sets), so that a chapter's page shows results, not third-party warnings."""
    transformers = require("transformers", "trl")
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        transformers.logging.set_verbosity(level)


def verl_python() -> str | None:
    """The Python of an environment with verl: $XXPO_VERL_PYTHON, else this repository's `.venv-verl` (which
    `make book` and `make test` build), else None (Colab: the verl column is left out)."""
    if os.environ.get("XXPO_VERL_PYTHON"):
        return os.environ["XXPO_VERL_PYTHON"]
    local = Path(__file__).resolve().parents[2] / ".venv-verl" / "bin" / "python"
    return str(local) if local.exists() else None


# -------------------------------------------------------------------------------------------------
# a lab task as a TRL dataset and reward


def task_dataset(task, n: int, seed: int):
    """n training problems of a lab task as a `datasets.Dataset` (prompt, solution, data)."""
    datasets = require("datasets", "trl")
    problems = task.sample(n, random.Random(seed))
    return datasets.Dataset.from_dict({"prompt": [p.prompt for p in problems],
                                       "solution": [p.solution for p in problems],
                                       "data": [list(p.data) for p in problems]})


def task_reward(task, eos_token_id: int):
    """TRL's reward function for a lab task: 1 when the lab's verifier accepts the response (it must end with
    EOS, as in the lab), else 0."""

    def reward(prompts, completions, completion_ids, solution, data, **kwargs):
        out = []
        for prompt, text, ids, sol, extra in zip(prompts, completions, completion_ids, solution, data):
            truncated = len(ids) == 0 or ids[-1] != eos_token_id
            out.append(float(task.verify(Problem(prompt, sol, tuple(extra)), text, truncated)))
        return out

    reward.__name__ = f"{task.name}_verifier"
    return reward


def trl_trainer(policy, tokenizer, cfg: Config, output_dir: str, steps: int, lab_loss: str | None = None,
                lab_config: dict | None = None, **grpo_fields):
    """TRL's GRPOTrainer (or `LabGRPOTrainer` with `lab_loss`) on the lab's task with the lab run's sizes: one
    generation batch of P·G responses per optimizer step, reused cfg.epochs times, a constant learning rate."""
    trl = require("trl", "trl")
    from xxpo_lab.integrations.trl import LabGRPOTrainer

    task = make_task(cfg.task, cfg.difficulty)
    device = next(policy.parameters()).device
    args = trl.GRPOConfig(
        output_dir=output_dir, per_device_train_batch_size=cfg.P * cfg.G, num_generations=cfg.G,
        max_completion_length=cfg.T_max, temperature=cfg.temperature, learning_rate=cfg.lr,
        lr_scheduler_type="constant", weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        num_iterations=cfg.epochs, max_steps=steps, use_cpu=device.type == "cpu", bf16=False,
        gradient_checkpointing=False, report_to=[], logging_steps=1, save_strategy="no", seed=cfg.seed,
        disable_tqdm=True, **grpo_fields)
    kwargs = {"model": policy, "reward_funcs": task_reward(task, tokenizer.eos_token_id), "args": args,
              "train_dataset": task_dataset(task, cfg.P * steps, cfg.seed), "processing_class": tokenizer}
    if lab_loss is None:
        return trl.GRPOTrainer(**kwargs)
    return LabGRPOTrainer(**kwargs, lab_loss=lab_loss, lab_config=lab_config)


# -------------------------------------------------------------------------------------------------
# one batch, three engines


def _flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def _lab(r: Recipe, cfg: Config, policy, b, extra: dict):
    """The lab's loss and parameter gradient under the recipe (with the engine's `extra` lab settings)."""
    lab_cfg = resolve(replace(cfg, loss=r.loss, **(r.loss_fields() | extra)))
    policy.zero_grad(set_to_none=True)
    logp = token_logp(policy, b.prompt_ids, b.prompt_mask, b.resp_ids, cfg.temperature)
    loss, _ = LOSSES[r.loss].fn(logp, b, lab_cfg)
    loss.backward()
    return loss.item(), _flat_grad(policy)


def _trl(r: Recipe, cfg: Config, policy, tokenizer, b, tmp: str):
    """TRL's own loss (GRPOConfig from the recipe) and parameter gradient, through its own forward pass."""
    model = copy.deepcopy(policy)
    trainer = trl_trainer(model, tokenizer, cfg, tmp, steps=1, **r.trl)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    inputs = {"prompt_ids": b.prompt_ids, "prompt_mask": b.prompt_mask, "completion_ids": b.resp_ids,
              "completion_mask": b.mask.long(), "advantages": b.adv[:, 0], "old_per_token_logps": b.prox_logp,
              "num_items_in_batch": b.mask.sum()}
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.item(), _flat_grad(model)


def _verl(recipes: list[Recipe], cfg: Config, policy, b) -> dict:
    """verl's own loss (actor config from the recipe) and parameter gradient, per recipe, or {} without verl."""
    python = verl_python()
    if python is None:
        return {}
    with torch.no_grad():
        logp = token_logp(policy, b.prompt_ids, b.prompt_mask, b.resp_ids, cfg.temperature)
    calls = [(r.algorithm, verl_actor_fields(r, cfg.T_max)) for r in recipes]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = f"{tmp}/in.pt", f"{tmp}/out.pt"
        torch.save({"old": b.prox_logp, "logp": logp, "adv": b.adv, "mask": b.mask, "G": cfg.G,
                    "calls": calls}, src)
        done = subprocess.run([python, "-m", "xxpo_lab.integrations.verl_call", src, dst], capture_output=True,
                              text=True, env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        if done.returncode:
            raise RuntimeError(f"verl's loss call failed ({python}):\n{done.stderr[-3000:]}")
        out = torch.load(dst)
    params = [p for p in policy.parameters() if p.requires_grad]
    logp = token_logp(policy, b.prompt_ids, b.prompt_mask, b.resp_ids, cfg.temperature)
    # verl's d loss / d logp, through the policy as verl's actor backpropagates it through its model
    return {name: (res["loss"], torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        logp, params, grad_outputs=res["grad"], retain_graph=True)])) for name, res in out.items()}


def three_ways(cfg: Config, algorithms: list[str], seed: int = 0) -> pd.DataFrame:
    """One batch of `cfg`'s warm start, reused for cfg.epochs updates (the ratios have moved); then for each
    algorithm the loss and parameter gradient of the lab, TRL (native settings) and verl (native settings).
    One row per (algorithm, engine): the seed, loss, gradient norm, and the gradient's relative distance to the lab's
    under that engine's lab settings (`trl_lab`, `verl_lab`). Engines without a native option are left out."""
    from xxpo_lab.measure import reuse_one_batch

    state, b, _ = reuse_one_batch(cfg, seed)
    policy, tokenizer, cfg = state.policy, state.tokenizer, state.cfg
    recipes = [recipe(a) for a in algorithms]
    rows, labs = [], {}

    def lab(r, extra: dict):
        """The lab's loss and gradient under the recipe with an engine's lab settings, computed once."""
        key = (r.algorithm, tuple(sorted(extra.items())))
        if key not in labs:
            labs[key] = _lab(r, cfg, policy, b, extra)
        return labs[key]

    def add(r, engine, loss, grad, lab_extra):
        lab_loss, lab_grad = lab(r, lab_extra)
        rows.append({"seed": seed, "algorithm": r.algorithm, "engine": engine, "loss": loss, "lab loss": lab_loss,
                     "grad norm": grad.norm().item(),
                     "rel. grad diff": ((grad - lab_grad).norm() / lab_grad.norm()).item()})

    for r in recipes:
        add(r, "lab", *lab(r, {}), {})
    with tempfile.TemporaryDirectory() as tmp:
        for r in recipes:
            if r.trl is not None:
                add(r, "TRL", *_trl(r, cfg, policy, tokenizer, b, tmp), r.trl_lab)
    for name, (loss, grad) in _verl([r for r in recipes if r.verl is not None], cfg, policy, b).items():
        add(recipe(name), "verl", loss, grad, recipe(name).verl_lab)
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------------------------------
# training through TRL


def trl_training(cfg: Config, steps: int, lab_loss: str | None = None, lab_config: dict | None = None,
                 model_name: str | None = None, **grpo_fields) -> pd.DataFrame:
    """Train the lab's warm start (or `model_name`, warm-started on the task by the lab) with TRL's trainer for
    `steps` generation batches of cfg.P·cfg.G responses; `lab_loss` (with `lab_config`) runs a lab loss through
    `LabGRPOTrainer`. One row per batch, like a lab run's history: TRL's `reward`, `loss` (mean over the
    batch's cfg.epochs updates) and `seconds` (TRL's step_time, summed over them), and every cfg.eval_every batches the lab's
    held-out accuracy of the policy (`eval/accuracy`, the lab's evaluator and prompts)."""
    transformers = require("transformers", "trl")
    cfg = resolve(replace(cfg, model_name=model_name) if model_name else cfg)
    device = pick_device()
    policy, tokenizer, _ = make_policy(cfg, device)
    task = make_task(cfg.task, cfg.difficulty)
    problems = task.eval_set(cfg.eval_prompts)
    evals = {}

    def evaluate(batch: int) -> None:
        gen = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + batch)
        policy.eval()
        with torch.no_grad():
            evals[batch] = accuracy(policy, tokenizer, task, problems, cfg, gen, device)["accuracy"]

    class Evaluate(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            batch, first = divmod(state.global_step, cfg.epochs)
            if first == 0 and (batch % cfg.eval_every == 0 or batch == steps):
                evaluate(batch)

    evaluate(0)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trl_trainer(policy, tokenizer, cfg, tmp, steps * cfg.epochs, lab_loss, lab_config, **grpo_fields)
        trainer.add_callback(Evaluate())
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # no printed log dicts
        trainer.train()
    log = pd.DataFrame([r for r in trainer.state.log_history if "loss" in r and "step" in r])
    log["batch"] = (log["step"] - 1) // cfg.epochs
    rows = log.groupby("batch").agg(reward=("reward", "first"), loss=("loss", "mean"),
                                    seconds=("step_time", "sum")).reset_index()
    table = pd.DataFrame({"step": range(steps + 1)}).merge(rows.rename(columns={"batch": "step"}), how="left")
    table["eval/samples"] = table["step"] * cfg.P * cfg.G
    table["eval/accuracy"] = table["step"].map(evals)
    return table.assign(seed=cfg.seed)


def position_gap(cfg: Config, model_type: str = "gpt2", seed: int = 0) -> pd.DataFrame:
    """What TRL's training forward does to left-padded prompts: TRL scores [prompt, completion] with input ids
    and attention mask only, so the model numbers positions from the first (pad) column, while generation
    (`transformers.generate`, the lab's sampler) numbers them from each prompt's first token. One row per
    response: the prompt's pad count and the mean |log π_sampler - log π_TRL| over its tokens, for the lab's
    warm start (GPT-2: learned absolute positions) or a `model_type='mixtral'` policy (rotary positions)."""
    from xxpo_lab.measure import sample_batch
    from xxpo_lab.policy import build_policy

    state, b = sample_batch(cfg, seed)
    policy = state.policy if model_type == "gpt2" else build_policy(replace(state.cfg, model_type=model_type),
                                                                     state.tokenizer).to(state.device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trl_trainer(copy.deepcopy(policy), state.tokenizer, state.cfg, tmp, steps=1)
        ids = torch.cat([b.prompt_ids, b.resp_ids], dim=1)
        attn = torch.cat([b.prompt_mask, b.mask.long()], dim=1)
        with torch.no_grad():
            theirs, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, attn, b.resp_ids.shape[1])
            ours = token_logp(policy, b.prompt_ids, b.prompt_mask, b.resp_ids, state.cfg.temperature)
    gap = ((ours - theirs).abs() * b.mask).sum(-1) / b.mask.sum(-1)
    return pd.DataFrame({"model": model_type, "pads": (b.prompt_mask == 0).sum(-1).numpy(),
                         "gap": gap.numpy()})


def cached(fn, cfg: Config, losses: list[str], **kwargs) -> pd.DataFrame:
    """`fn(cfg, **kwargs)` (three_ways, trl_training, position_gap) cached like a run: keyed by the config, the
    arguments, fast mode, the lab code it runs (the `losses` it uses included), this package's integration code, TRL's
    version and whether verl was there."""
    from xxpo_lab import loop, measure, policy
    from xxpo_lab.config import fast_mode, to_dict
    from xxpo_lab.runs import cached_table

    source = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.glob("*.py"))))
    # fast mode shrinks what some of these functions draw (reuse_one_batch, sample_batch size the config
    # themselves): the two modes must not share an entry
    payload = {"fn": fn.__name__, "fast": fast_mode(), "config": to_dict(cfg), "args": kwargs, "loss": losses,
               "integrations": source.hexdigest()[:16], "trl": importlib.metadata.version("trl"),
               "verl": verl_python() is not None}
    def compute():
        with quiet():
            return fn(cfg, **kwargs)

    return cached_table(f"engines-{fn.__name__}", payload, compute,
                        code=[policy.make_policy, policy.accuracy, policy.build_policy, loop.loss_of,
                              measure.reuse_one_batch, measure.sample_batch])


def on_colab() -> bool:
    """True inside Google Colab (where a chapter may load real pretrained weights by name)."""
    return "google.colab" in sys.modules
