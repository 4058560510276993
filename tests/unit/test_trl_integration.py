"""xxpo_lab.integrations.trl: a lab loss inside TRL's GRPOTrainer, trained for real on this CPU.

A tiny GPT-2 is saved to a temporary folder (no hub), TRL generates, scores and updates it; the loss is the lab's.
The parity case builds TRL's own trainer and the lab's from the same model and compares `_compute_loss` on the
same tensors, as test_trl_parity.py does for the registry.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip  # noqa: B018  (TRL is a pinned test dependency: the imports below fail loudly without it)
import datasets  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402

from xxpo_lab.config import ConfigError  # noqa: E402
from xxpo_lab.tasks import char_tokenizer  # noqa: E402

B, G, T, L = 8, 4, 6, 5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab_trl")
    tok = char_tokenizer()
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=len(tok),
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                     bos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root


def reward_ones(completions, **kwargs):
    """1 for completions that contain the digit 1: a verifiable reward with both outcomes on a random model."""
    return [float("1" in c) for c in completions]


def make_trainer(model_dir, monkeypatch, lab_loss: str | None, max_steps: int = 2, **config):
    from xxpo_lab.integrations.trl import LabGRPOTrainer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = trl.GRPOConfig(output_dir=str(model_dir / f"out_{lab_loss}"), per_device_train_batch_size=B,
                          num_generations=G, max_completion_length=T, max_steps=max_steps, learning_rate=5e-3,
                          report_to=[], use_cpu=True, bf16=False, logging_steps=1, save_strategy="no", seed=0,
                          **({"beta": 0.0} | config))
    dataset = datasets.Dataset.from_dict({"prompt": ["12+3=", "4+5=", "7+7=", "1+1="] * 4})
    kwargs = dict(model=str(model_dir / "model"), reward_funcs=reward_ones, args=args, train_dataset=dataset,
                  processing_class=char_tokenizer())
    if lab_loss is None:
        return trl.GRPOTrainer(**kwargs)
    return LabGRPOTrainer(**kwargs, lab_loss=lab_loss, lab_config=config.pop("lab_config", None))


def test_importing_the_lab_never_imports_trl():
    code = "import sys, xxpo_lab; assert 'trl' not in sys.modules and 'verl' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_missing_extra_names_the_pip_command():
    from xxpo_lab.integrations import require

    with pytest.raises(ImportError, match=r'needs \'no_such_engine\', which is not installed: pip install "xxpo-lab\[trl\]"'):
        require("no_such_engine", "trl")


@pytest.mark.parametrize("lab_loss", ["gmpo", "a3po"])
def test_trl_trains_with_a_lab_loss_it_does_not_have(model_dir, monkeypatch, lab_loss):
    trainer = make_trainer(model_dir, monkeypatch, lab_loss)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    after = list(trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before)), "no parameter moved"
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert len(logged) == 2 and all(torch.isfinite(torch.tensor(row["loss"])) for row in logged)
    keys = set().union(*trainer.state.log_history)
    assert "clip_ratio/region_mean" in keys and "entropy" in keys  # TRL's names for what TRL also measures
    assert any(k.startswith("xxpo/ratio/") for k in keys)  # the lab's names for the rest


def fake_inputs(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.arange(T)[None] < torch.tensor([6, 3, 1, 5, 6, 2, 4, 6])[:, None]).long()
    old = -2.0 * torch.rand(B, T, generator=gen) - 0.05
    return {"prompt_ids": torch.randint(2, 12, (B, L), generator=gen), "prompt_mask": torch.ones(B, L, dtype=torch.long),
            "completion_ids": torch.randint(2, 12, (B, T), generator=gen) * mask, "completion_mask": mask,
            "advantages": torch.tensor([1.3, -0.7, 0.0, 0.4, -1.6, 0.9, -0.2, 1.1]),
            "old_per_token_logps": old, "num_items_in_batch": mask.sum(),
            "logp": old + 0.5 * torch.randn(B, T, generator=gen)}


def loss_and_grad(trainer, monkeypatch, inputs):
    logp = inputs["logp"].clone().requires_grad_(True)
    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies",
                        lambda *a, **k: (logp, torch.rand_like(logp), None))
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer._compute_loss(trainer.model, {k: v for k, v in inputs.items() if k != "logp"})
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad


@pytest.mark.parametrize("loss_type,lab_loss", [("sapo", "sapo"), ("grpo", "grpo"), ("dapo", "dapo")])
def test_the_lab_loss_in_trl_equals_trls_own_on_the_same_batch(model_dir, monkeypatch, loss_type, lab_loss):
    """Same model, same tensors: the lab's loss through the integration and TRL's own loss_type agree in value
    and gradient (one micro-batch, so TRL's dapo normaliser is the batch's token count, as the lab's)."""
    theirs = make_trainer(model_dir, monkeypatch, None, loss_type=loss_type, use_bias_correction_kl=False)
    ours = make_trainer(model_dir, monkeypatch, lab_loss, loss_type=loss_type, use_bias_correction_kl=False)
    inputs = fake_inputs()
    trl_loss, trl_grad = loss_and_grad(theirs, monkeypatch, inputs)
    lab_loss_value, lab_grad = loss_and_grad(ours, monkeypatch, inputs)
    torch.testing.assert_close(lab_loss_value, trl_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(lab_grad, trl_grad, rtol=1e-5, atol=1e-7)
    assert trl_grad.abs().max() > 1e-4


def test_settings_the_lab_loss_cannot_honour_fail_at_construction(model_dir, monkeypatch):
    with pytest.raises(ConfigError, match=r"GRPOConfig.importance_sampling_level = 'sequence' is not allowed with "
                                          r"lab_loss='grpo': must be 'token'.*lab_loss='gspo'"):
        make_trainer(model_dir, monkeypatch, "grpo", importance_sampling_level="sequence")
    with pytest.raises(ConfigError, match=r"Config.loss = 'ppo2' is not allowed: must be one of .*a3po"):
        make_trainer(model_dir, monkeypatch, "ppo2")
