"""The GSM8K script of chapter 13 (`python -m xxpo_lab.integrations.gsm8k_trl`), run end to end on this CPU with a
tiny GPT-2 and a byte-level BPE tokenizer saved to a temp folder and a local GSM8K-format file: one TRL optimizer
step with an algorithm TRL has (SAPO, native loss_type) and one it lacks (A-3PO, through LabGRPOTrainer)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from xxpo_lab.integrations.gsm8k_trl import INSTRUCTION, final_number, gsm8k_reward

ROWS = [{"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
         "answer": f"He has {a} + {b} = {a + b} apples.\n#### {a + b}"} for a, b in [(3, 4), (10, 2), (7, 7), (1, 9)]]


def test_the_reward_reads_gsm8k_answers():
    assert final_number("so 3 + 4 = 7 apples.\n#### 7") == "7"
    assert final_number("The answer is 1,234.") == "1234"
    assert final_number("no number") is None
    assert gsm8k_reward(["... #### 7", "it is 8", [{"role": "assistant", "content": "#### 12"}]],
                        [ROWS[0]["answer"], ROWS[0]["answer"], ROWS[1]["answer"]]) == [1.0, 0.0, 1.0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gsm8k")
    corpus = [f"Question: {r['question']} {INSTRUCTION}\nAnswer: {r['answer']}" for r in ROWS] * 20
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>")
    tok.save_pretrained(root / "model")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_layer=1, n_head=2, n_embd=32,
                               bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(root / "model")
    (root / "gsm8k.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS * 4))
    return root


@pytest.mark.parametrize("algorithm", ["SAPO", "A-3PO"])
def test_the_script_trains_one_step_on_cpu(tiny, algorithm):
    out = tiny / f"out-{algorithm}"
    cmd = [sys.executable, "-m", "xxpo_lab.integrations.gsm8k_trl", "--algorithm", algorithm, "--model",
           str(tiny / "model"), "--dataset", str(tiny / "gsm8k.jsonl"), "--output-dir", str(out), "--max-steps", "1",
           "--per-device-batch", "4", "--grad-accum", "1", "--num-generations", "2", "--max-completion-length", "8",
           "--cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'loss'" in done.stdout + done.stderr  # TRL logged the step


def test_an_unknown_algorithm_lists_the_crosswalk():
    done = subprocess.run([sys.executable, "-m", "xxpo_lab.integrations.gsm8k_trl", "--algorithm", "PPO2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "no recipe for algorithm 'PPO2': must be one of ['PPO', 'GRPO'" in done.stderr
