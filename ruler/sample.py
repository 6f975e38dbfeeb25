"""The data of one generated sample, and its JSON form (RULER's fields plus ours)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ruler.templates import ANSWER_LINKS


@dataclass
class Needle:
    key: str
    value: str
    text: str
    start: int  # character span of the needle in Sample.prompt
    end: int
    value_start: int  # character span of the value in Sample.prompt
    value_end: int
    turns: list[int] = field(default_factory=list)  # 0-based turns that ask for it; [] = distractor
    depth: float = 0.0  # token start / prompt tokens, after fitting
    token_start: int | None = None  # token span in the rendered prompt (what is prefilled)
    token_end: int | None = None
    value_token_start: int | None = None
    value_token_end: int | None = None
    answer_token_start: int | None = None  # from the key's first token to the value's last: what a turn's answer reads
    answer_token_end: int | None = None


@dataclass
class Turn:
    question: str
    answer_prefix: str
    keys: list[str]
    outputs: list[str]  # gold values, in the order asked

    def gold_answer(self, answer_format: str = "values", values_per_key: int = 1) -> str:
        """The answer text a model is trained to produce after the answer prefix."""
        if answer_format in ANSWER_LINKS:
            link = ANSWER_LINKS[answer_format]
            groups = [self.outputs[i * values_per_key : (i + 1) * values_per_key] for i in range(len(self.keys))]
            if answer_format == "tagged":  # every value carries its key, as in the needle
                return " " + ", ".join(" ".join(k + v for v in g) for k, g in zip(self.keys, groups)) + "."
            return " " + ", ".join(f"{k}{link}{' '.join(g)}" for k, g in zip(self.keys, groups)) + "."
        return " " + ", ".join(self.outputs) + "."


@dataclass
class Sample:
    task: str
    length: int  # token budget the sample was fitted to
    index: int
    seed: int
    prompt: str  # instruction + context: prefilled once
    turns: list[Turn]
    needles: list[Needle]
    haystack: str = ""
    num_units: int = 0  # haystack units after fitting
    prompt_tokens: int | None = None
    total_tokens: int | None = None  # prompt + turns + reserved answer tokens
    chat: bool = False  # turns rendered with the tokenizer's chat template
    options: dict = field(default_factory=dict)  # the task spec it was drawn from

    # --- RULER's record ---------------------------------------------------------------
    def ruler_record(self) -> dict:
        """RULER's fields for the first turn (input = prompt + question), plus ours."""
        first = self.turns[0] if self.turns else Turn("", "", [], [])
        record = {
            "index": self.index,
            "input": self.prompt + first.question,
            "outputs": list(first.outputs),
            "length": self.total_tokens if self.total_tokens is not None else self.length,
            "answer_prefix": first.answer_prefix,
        }
        record.update(self.to_dict())
        return record

    def to_dict(self) -> dict:
        d = asdict(self)
        d["task_name"] = d.pop("task")
        d["length_budget"] = d.pop("length")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Sample":
        d = dict(d)
        d["task"] = d.pop("task_name")
        d["length"] = d.pop("length_budget")
        d["turns"] = [Turn(**t) for t in d["turns"]]
        d["needles"] = [Needle(**n) for n in d["needles"]]
        return cls(**d)

    # --- helpers ----------------------------------------------------------------------------
    def needles_for_turn(self, turn: int) -> list[Needle]:
        return [n for n in self.needles if turn in n.turns]
