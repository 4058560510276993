"""Toy verifiable tasks and the character tokenizer.

A task makes problems (prompt text, one reference solution) from a seeded `random.Random`, and a
deterministic verifier says whether a response is correct. Every task shares one response format:

    <answer><filler '.' repeated 0 or more times><eos>

so the policy controls the length of its response (chapter 3 is about that length). A response
without EOS within T_max is truncated and scores 0; a malformed one (empty answer, a '.' inside
the answer, characters the answer cannot contain) scores 0. Rewards are 1.0 (correct) or 0.0.

Problems are split into train and held-out eval by a hash of the prompt, so the two never overlap.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, EOS, FILLER = "<pad>", "<eos>", "."
CHARS = "0123456789+-*=,>.abcdefghijklmnopqrstuvwxyz"
LETTERS = "abcdefghij"
EVAL_BUCKETS = 8  # one prompt in 8 is held out for evaluation


@cache
def char_tokenizer() -> PreTrainedTokenizerFast:
    """A `transformers` fast tokenizer with one token per character and explicit pad/eos ids (0 and 1)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1} | {c: i + 2 for i, c in enumerate(CHARS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token=None))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS)
    tok.padding_side = "left"  # prompts of different lengths end where the response starts
    return tok


@dataclass(frozen=True)
class Problem:
    prompt: str
    """What the policy sees, e.g. '07+35='."""
    solution: str
    """One correct answer (used for demonstrations); the verifier may accept others (countdown)."""
    data: tuple = ()
    """What the verifier needs beyond the solution (countdown: the numbers and the target)."""


def split_of(prompt: str) -> str:
    """'eval' for one prompt in EVAL_BUCKETS (by a stable hash), else 'train'."""
    return "eval" if zlib.crc32(prompt.encode()) % EVAL_BUCKETS == 0 else "train"


def parse_response(text: str) -> tuple[str, int] | None:
    """Split '<answer><dots>' into (answer, number of filler dots); None when malformed."""
    answer = text.rstrip(FILLER)
    if not answer or FILLER in answer:
        return None
    return answer, len(text) - len(answer)


class Task:
    """Base class: a family of problems with a difficulty knob and a verifier."""

    name = ""
    min_difficulty, max_difficulty = 1, 1

    def __init__(self, difficulty: int):
        if not self.min_difficulty <= difficulty <= self.max_difficulty:
            raise ValueError(
                f"difficulty = {difficulty} is not allowed for task {self.name!r}: "
                f"must be in [{self.min_difficulty}, {self.max_difficulty}]"
            )
        self.difficulty = difficulty

    # subclasses define these three
    def generate(self, rng: random.Random) -> Problem:
        raise NotImplementedError

    def check(self, problem: Problem, answer: str) -> bool:
        return answer == problem.solution

    @property
    def max_answer_tokens(self) -> int:
        raise NotImplementedError

    def wrong_answer(self, problem: Problem, rng: random.Random) -> str:
        """A plausible wrong answer of the right kind (demonstrations of errors, probes)."""
        s = problem.solution
        while True:
            i = rng.randrange(len(s))
            alphabet = "0123456789" if s[i].isdigit() else LETTERS
            cand = s[:i] + rng.choice(alphabet) + s[i + 1:]
            if not self.check(problem, cand) and not (len(cand) > 1 and cand[0] == "0"):
                return cand

    # shared machinery
    def sample(self, n: int, rng: random.Random, split: str = "train") -> list[Problem]:
        """n problems of one split, drawn with `rng` (repeats allowed; the split is a hash of the prompt)."""
        out = []
        while len(out) < n:
            p = self.generate(rng)
            if split_of(p.prompt) == split:
                out.append(p)
        return out

    def eval_set(self, n: int) -> list[Problem]:
        """The fixed held-out set: the same n problems for every run of this task and difficulty."""
        return self.sample(n, random.Random(1234), split="eval")

    def demonstration(self, problem: Problem, rng: random.Random, filler: int = 0, wrong_frac: float = 0.0,
                      wrong_filler: int = 0) -> tuple[str, bool]:
        """A response text for supervised warm start: (answer + dots, whether the answer is correct)."""
        if rng.random() < wrong_frac:
            return self.wrong_answer(problem, rng) + FILLER * rng.randint(0, wrong_filler), False
        return problem.solution + FILLER * rng.randint(0, filler), True

    def verify(self, problem: Problem, text: str, truncated: bool) -> bool:
        """Correct iff the response ended with EOS, is well-formed, and its answer checks out."""
        if truncated:
            return False
        parsed = parse_response(text)
        return parsed is not None and self.check(problem, parsed[0])


class Addition(Task):
    """'ab+cd=' -> the sum; operands zero-padded to `difficulty` digits so prompts have one length."""

    name, min_difficulty, max_difficulty = "addition", 1, 6

    def generate(self, rng):
        d = self.difficulty
        a, b = rng.randrange(10**d), rng.randrange(10**d)
        return Problem(f"{a:0{d}d}+{b:0{d}d}=", str(a + b))

    @property
    def max_answer_tokens(self):
        return self.difficulty + 1


class Arithmetic(Task):
    """'7-3+5=' -> the value; `difficulty` single-digit operands joined by + and -."""

    name, min_difficulty, max_difficulty = "arithmetic", 2, 8

    def generate(self, rng):
        digits = [rng.randrange(10) for _ in range(self.difficulty)]
        expr = str(digits[0]) + "".join(rng.choice("+-") + str(x) for x in digits[1:])
        return Problem(expr + "=", str(_evaluate(expr)))

    def wrong_answer(self, problem, rng):
        value = int(problem.solution)
        return str(value + rng.choice([-2, -1, 1, 2]))

    @property
    def max_answer_tokens(self):
        k = self.difficulty
        return max(len(str(9 * k)), len(str(-9 * (k - 1))))


class Countdown(Task):
    """'3,5,7>22=' -> any expression that uses each number once with + - * and equals the target."""

    name, min_difficulty, max_difficulty = "countdown", 2, 5
    pattern = re.compile(r"[1-9](?:[+\-*][1-9])*")

    def generate(self, rng):
        numbers = [rng.randint(1, 9) for _ in range(self.difficulty)]
        expr = str(numbers[0]) + "".join(rng.choice("+-*") + str(x) for x in numbers[1:])
        target = _evaluate(expr)
        shown = sorted(numbers)
        return Problem(",".join(map(str, shown)) + f">{target}=", expr, (tuple(shown), target))

    def check(self, problem, answer):
        numbers, target = problem.data
        if not self.pattern.fullmatch(answer):
            return False
        used = sorted(int(c) for c in answer if c.isdigit())
        return used == list(numbers) and _evaluate(answer) == target

    def wrong_answer(self, problem, rng):
        expr = problem.solution
        ops = [i for i, c in enumerate(expr) if c in "+-*"]
        while True:
            i = rng.choice(ops)
            cand = expr[:i] + rng.choice("+-*".replace(expr[i], "")) + expr[i + 1:]
            if not self.check(problem, cand):
                return cand

    @property
    def max_answer_tokens(self):
        return 2 * self.difficulty - 1


class StringTask(Task):
    """'cab>' -> a transform of the string (copy, reverse, sort); length 2..difficulty over 10 letters."""

    min_difficulty, max_difficulty = 2, 20

    def __init__(self, difficulty: int, name: str, transform):
        self.name, self.transform = name, transform
        super().__init__(difficulty)

    def generate(self, rng):
        s = "".join(rng.choice(LETTERS) for _ in range(rng.randint(2, self.difficulty)))
        return Problem(s + ">", self.transform(s))

    @property
    def max_answer_tokens(self):
        return self.difficulty


def _evaluate(expr: str) -> int:
    """Value of an expression of single digits and + - * with the usual precedence (input is validated)."""
    total, term, sign = 0, int(expr[0]), 1
    for op, digit in zip(expr[1::2], expr[2::2]):
        if op == "*":
            term *= int(digit)
        else:
            total += sign * term
            term, sign = int(digit), (1 if op == "+" else -1)
    return total + sign * term


TASKS = {
    "addition": Addition,
    "arithmetic": Arithmetic,
    "countdown": Countdown,
    "copy": lambda d: StringTask(d, "copy", lambda s: s),
    "reverse": lambda d: StringTask(d, "reverse", lambda s: s[::-1]),
    "sort": lambda d: StringTask(d, "sort", lambda s: "".join(sorted(s))),
}


DEFAULT_DIFFICULTY = {"addition": 2, "arithmetic": 3, "countdown": 3, "copy": 5, "reverse": 5, "sort": 5}
"""What Config(difficulty=None) means for each task: a size a 2-layer GPT-2 warm-starts in seconds."""


def make_task(name: str, difficulty: int) -> Task:
    """The task called `name` at a difficulty; unknown names list the valid ones."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; the tasks are: {', '.join(TASKS)}")
    return TASKS[name](difficulty)
