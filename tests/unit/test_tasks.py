"""Tasks: verifiers (malformed outputs included), splits, determinism, the tokenizer."""

import random

import pytest

from xxpo_lab.tasks import TASKS, Problem, char_tokenizer, make_task, parse_response, split_of


@pytest.mark.parametrize("text, expected", [
    ("42", ("42", 0)), ("42...", ("42", 3)), ("", None), ("...", None), ("4.2", None), ("4.2.", None),
])
def test_parse_response(text, expected):
    assert parse_response(text) == expected


def test_addition_verifier():
    task = make_task("addition", 2)
    p = Problem("07+35=", "42")
    assert task.verify(p, "42", truncated=False)
    assert task.verify(p, "42..", truncated=False)  # filler after the answer is allowed
    assert not task.verify(p, "42", truncated=True)  # no EOS within T_max: zero reward
    assert not task.verify(p, "43", truncated=False)
    assert not task.verify(p, "042", truncated=False)
    assert not task.verify(p, ".42", truncated=False)  # filler before the answer is malformed
    assert not task.verify(p, "", truncated=False)


def test_countdown_verifier_accepts_any_valid_expression():
    task = make_task("countdown", 3)
    p = Problem("3,5,7>22=", "3*5+7", ((3, 5, 7), 22))
    assert task.verify(p, "3*5+7", False)
    assert task.verify(p, "5*3+7", False)  # another order, same value
    assert task.verify(p, "7+5*3", False)
    assert not task.verify(p, "3*5-7", False)  # wrong value
    assert not task.verify(p, "3*5+7+0", False)  # uses a number not given
    assert not task.verify(p, "15+7", False)  # multi-digit numbers are not the given ones
    assert not task.verify(p, "3**5", False)  # malformed expression
    assert not task.verify(p, "3*5+", False)


def test_countdown_problems_are_solvable():
    task = make_task("countdown", 4)
    for p in task.sample(200, random.Random(0)):
        assert task.check(p, p.solution), p


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_solution_verifies_and_wrong_answers_do_not(name):
    task = make_task(name, 3)
    rng = random.Random(1)
    for p in task.sample(100, rng):
        assert task.verify(p, p.solution, truncated=False)
        assert not task.verify(p, task.wrong_answer(p, rng), truncated=False)
        assert len(p.solution) <= task.max_answer_tokens


def test_string_tasks():
    assert make_task("reverse", 5).transform("abc") == "cba"
    assert make_task("sort", 5).transform("cab") == "abc"
    assert make_task("copy", 5).transform("cab") == "cab"


@pytest.mark.parametrize("name", list(TASKS))
def test_train_and_eval_splits_are_disjoint(name):
    task = make_task(name, 3)
    train = {p.prompt for p in task.sample(300, random.Random(0), "train")}
    evals = {p.prompt for p in task.eval_set(100)}
    assert train and evals and not train & evals
    assert all(split_of(p) == "eval" for p in evals)


def test_sampling_is_deterministic_and_eval_set_fixed():
    task = make_task("addition", 2)
    assert task.sample(20, random.Random(3)) == task.sample(20, random.Random(3))
    assert task.sample(20, random.Random(3)) != task.sample(20, random.Random(4))
    assert task.eval_set(50) == make_task("addition", 2).eval_set(50)


def test_demonstrations():
    task = make_task("addition", 2)
    rng = random.Random(0)
    p = task.sample(1, rng)[0]
    texts = [task.demonstration(p, rng, filler=3) for _ in range(50)]
    assert all(ok and task.verify(p, t, False) for t, ok in texts)
    assert {t.count(".") for t, _ in texts} == {0, 1, 2, 3}
    wrong = [task.demonstration(p, rng, wrong_frac=0.999, wrong_filler=5) for _ in range(20)]
    assert all(not ok and not task.verify(p, t, False) for t, ok in wrong)


def test_bad_task_name_and_difficulty():
    with pytest.raises(KeyError, match="addition, arithmetic"):
        make_task("multiplication", 2)
    with pytest.raises(ValueError, match=r"difficulty = 9 .* \[1, 6\]"):
        make_task("addition", 9)


def test_tokenizer_round_trip_and_special_ids():
    tok = char_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 1)
    ids = tok("07+35=")["input_ids"]
    assert len(ids) == 6 and tok.decode(ids) == "07+35="
    enc = tok(["ab>", "abcd>"], padding=True)
    assert enc["input_ids"][0][:2] == [0, 0] and enc["attention_mask"][0] == [0, 0, 1, 1, 1]  # left padding
