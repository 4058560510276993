"""Loading a pretrained causal LM with its own tokenizer (real `gpt2` on Colab) uses the same code path.

Here the "pretrained" model is a tiny GPT-2 with a byte-level BPE tokenizer (like GPT-2's: no pad token,
prompts of different token lengths), saved with `save_pretrained` to a temp folder.
"""

import random

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from xxpo_lab import Config, train
from xxpo_lab.policy import encode_prompts, load_pretrained, token_logp
from xxpo_lab.rollout import sample
from xxpo_lab.tasks import make_task


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-gpt2")
    task = make_task("addition", 2)
    corpus = [p.prompt + p.solution + "." for p in task.sample(3000, random.Random(0))]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    tok.save_pretrained(path)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_layer=1, n_head=2, n_embd=32,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    return path


def test_load_pretrained_sets_padding_and_dropout(pretrained_dir):
    model, tok = load_pretrained(str(pretrained_dir))
    assert tok.pad_token == tok.eos_token and tok.padding_side == "left"
    assert not model.training


def test_sampler_and_learner_agree_with_a_bpe_tokenizer(pretrained_dir):
    model, tok = load_pretrained(str(pretrained_dir))
    problems = make_task("addition", 2).sample(32, random.Random(1))
    prompt_ids, prompt_mask = encode_prompts(tok, problems, "cpu")
    assert (prompt_mask == 0).any(), "BPE prompts should have different lengths"
    gen = torch.Generator().manual_seed(0)
    resp, mask, behav_logp, _, _ = sample(model, prompt_ids, prompt_mask, 6, 1.0, gen, tok.eos_token_id,
                                          tok.pad_token_id)
    logp = token_logp(model, prompt_ids, prompt_mask, resp, 1.0)
    assert torch.allclose(logp * mask, behav_logp, atol=1e-5)


def test_training_a_pretrained_model_uses_the_same_loop(pretrained_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XXPO_CACHE", str(tmp_path))
    cfg = Config(model_name=str(pretrained_dir), task="addition", difficulty=1, T_max=4, P=4, G=4, steps=3,
                 eval_prompts=16, warm_start_acc=0.2, lr=3e-4)
    hist = train(cfg, progress=False)
    assert hist.attrs["warm_start"]["accuracy"] >= 0.2
    assert len(hist) == 4 and hist["reward/mean"].notna().sum() == 3
