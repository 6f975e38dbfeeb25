"""Task specifications and the registry of named tasks (RULER's NIAH family + split-query MQ-NIAH)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from ruler.keys import KEY_KINDS, VALUE_KINDS

HAYSTACKS = ("noise", "essay", "needle")
SPLITS = ("all", "balanced", "clean", "schedule")
QUESTION_STYLES = ("literal", "ordinal")
ANSWER_FORMATS = ("values", "keyed", "mirror", "tagged")
NEEDLE_STYLES = ("ruler", "tagged")
NOISE_LAYOUTS = ("ruler", "sentences")


@dataclass(frozen=True)
class TaskSpec:
    """Everything that defines a task; a Hydra `task` config maps onto these fields."""

    name: str
    haystack: str = "noise"  # noise | essay | needle (distractor needles)
    key_kind: str = "words"  # words (RULER's adjective-noun pairs) | noun_pairs (ours) | word | numbers | artifact | uuids
    value_kind: str = "numbers"  # numbers | uuids
    value_digits: int = 7
    num_keys: int = 1  # keys with needles in the context
    num_values: int = 1  # values per key (multivalue)
    num_queries: int = 1  # keys asked about over all turns (the rest are distractors)
    # Turns: "all" asks every queried key in one turn; "balanced" splits them in half over two
    # turns; "clean" is a balanced split whose turn-2 needles lie before the recency window;
    # "schedule" follows `schedule` (a list of key-index lists, one per turn, revisits allowed).
    split: str = "all"
    split_index: int | None = None  # which balanced split (see partitions()); None = drawn from the seed
    schedule: tuple[tuple[int, ...], ...] = ()
    recency_window: int = 0  # tokens at the end of the prompt where "clean" puts no later-turn needle
    recent_free_tokens: int = 0  # tokens at the end of the prompt free of any needle
    depths: tuple[float, ...] = ()  # fixed needle depths in [0, 1]; empty = drawn from the seed
    question_style: str = "literal"  # literal | ordinal (turns >= 2 name keys by order of appearance)
    answer_tokens: int = 128  # tokens reserved per turn for the generated answer (RULER's tokens_to_generate for NIAH)
    # "ruler": singular instruction / question / answer prefix when one value is asked (RULER's
    # rewrite); "plural": always plural (the wording the embedded model was trained on).
    wording: str = "ruler"
    # "ruler": the noise haystack as RULER lays it out, its five-sentence block per unit, units
    # and needles one per line; "sentences": one sentence per unit joined by spaces (the embedded model's).
    noise_layout: str = "ruler"
    # How a gold answer is written (training targets; the metric only looks for the values):
    # "values" = "1234, 5678."; "keyed" = "falcon: 1234, heron: 5678." (each value after its key);
    # "mirror" = "falcon is: 1234, heron is: 5678." (each value after exactly the words that
    # precede it in its needle, so retrieval is a key-conditioned copy); "tagged" =
    # "falcon1234, heron5678." (the tagged needle's own spelling).
    answer_format: str = "values"
    # "ruler": RULER's needle ("... for falcon is: 1234."); "tagged": the key directly before
    # its value ("... is: falcon1234.", the embedded model's variant).
    needle_style: str = "ruler"
    # the essay haystack's corpus: a text file, a folder of .txt files, or RULER's PaulGrahamEssays.json;
    # default: ruler/data/essay.txt (self-written, repeated when a sample needs more, with a warning)
    essay_path: str | None = None
    chat: bool | None = None  # None = use the tokenizer's chat template when it has one
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        checks = [
            (self.haystack in HAYSTACKS, f"haystack {self.haystack!r} not in {HAYSTACKS}"),
            (self.key_kind in KEY_KINDS, f"key_kind {self.key_kind!r} not in {KEY_KINDS}"),
            (self.value_kind in VALUE_KINDS, f"value_kind {self.value_kind!r} not in {VALUE_KINDS}"),
            (self.split in SPLITS, f"split {self.split!r} not in {SPLITS}"),
            (self.answer_format in ANSWER_FORMATS, f"answer_format {self.answer_format!r} not in {ANSWER_FORMATS}"),
            (self.needle_style in NEEDLE_STYLES, f"needle_style {self.needle_style!r} not in {NEEDLE_STYLES}"),
            (self.wording in ("ruler", "plural"), f"wording {self.wording!r} not in ('ruler', 'plural')"),
            (self.noise_layout in NOISE_LAYOUTS, f"noise_layout {self.noise_layout!r} not in {NOISE_LAYOUTS}"),
            (self.question_style in QUESTION_STYLES, f"question_style {self.question_style!r} not in {QUESTION_STYLES}"),
            (1 <= self.num_queries <= self.num_keys, f"num_queries {self.num_queries} must be in [1, num_keys={self.num_keys}]"),
            (not self.depths or len(self.depths) == self.num_keys * self.num_values,
             f"depths has {len(self.depths)} entries for {self.num_keys * self.num_values} needles"),
            (all(0.0 <= d <= 1.0 for d in self.depths), "depths must lie in [0, 1]"),
            (self.split != "schedule" or bool(self.schedule), "split='schedule' needs a schedule"),
            (self.split not in ("balanced", "clean") or self.num_queries >= 2, "a split needs at least 2 queried keys"),
            (self.split != "clean" or self.recency_window > 0, "split='clean' needs recency_window > 0"),
            (self.question_style == "literal" or self.haystack != "needle",
             "ordinal questions need a haystack without distractor needles"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"task {self.name}: {message}")
        if self.split == "schedule":
            bad = [i for turn in self.schedule for i in turn if not 0 <= i < self.num_queries]
            if bad:
                raise ValueError(f"task {self.name}: schedule names keys {bad} outside [0, {self.num_queries})")

    def with_options(self, **overrides) -> "TaskSpec":
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown task options {unknown}; known: {sorted(known)}")
        if "schedule" in overrides:
            overrides["schedule"] = tuple(tuple(t) for t in overrides["schedule"])
        if "depths" in overrides:
            overrides["depths"] = tuple(overrides["depths"])
        return replace(self, **overrides)


def _mq(n: int) -> TaskSpec:
    # IdleKV's split-query benchmark: artifact keys, numeric values, essay haystack, 64 answer tokens per turn.
    return TaskSpec(f"mq_niah_{n}q", haystack="essay", key_kind="artifact", num_keys=n, num_queries=n, split="balanced",
                    answer_tokens=64)


# The embedded model's format: what it was trained on (models/README.md), not RULER's wording or layout.
EMBEDDED = {"wording": "plural", "noise_layout": "sentences"}


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec("niah_single_1", haystack="noise", key_kind="words"),
        TaskSpec("niah_single_2", haystack="essay", key_kind="words"),
        TaskSpec("niah_single_3", haystack="essay", key_kind="words", value_kind="uuids"),
        TaskSpec("niah_multikey_1", haystack="essay", key_kind="words", num_keys=4),
        TaskSpec("niah_multikey_2", haystack="needle", key_kind="words"),
        TaskSpec("niah_multikey_3", haystack="needle", key_kind="uuids", value_kind="uuids"),
        TaskSpec("niah_multivalue", haystack="essay", key_kind="words", num_values=4),
        TaskSpec("niah_multiquery", haystack="essay", key_kind="words", num_keys=4, num_queries=4),
        _mq(2), _mq(4), _mq(6), _mq(8),
        # The embedded model's setting: RULER's noise haystack (niah_single_1's), one-token word
        # keys, 4-digit values, tagged needles ("... is: falcon1234.") and answers that spell
        # them the same way. The RULER-needle variant (its stages 3-4) and the
        # distractor-needle variant (stages 1-2) are kept for the training recipe.
        TaskSpec("mq_niah_4q_embedded", haystack="noise", key_kind="word", value_digits=4, num_keys=4,
                 num_queries=4, split="balanced", answer_format="tagged", needle_style="tagged", answer_tokens=24, **EMBEDDED),
        TaskSpec("mq_niah_4q_embedded_ruler", haystack="noise", key_kind="word", value_digits=4, num_keys=4,
                 num_queries=4, split="balanced", answer_format="mirror", answer_tokens=24, **EMBEDDED),
        TaskSpec("mq_niah_4q_embedded_needles", haystack="needle", key_kind="word", value_digits=4, num_keys=4,
                 num_queries=4, split="balanced", answer_format="mirror", answer_tokens=24, **EMBEDDED),
        # The distractor-needle haystack in the final (tagged) format: every haystack row a needle no
        # turn asks about, where a wrong question should not help (models/embedded_distractors).
        TaskSpec("mq_niah_4q_embedded_distractors", haystack="needle", key_kind="word", value_digits=4, num_keys=4,
                 num_queries=4, split="balanced", answer_format="tagged", needle_style="tagged", answer_tokens=24, **EMBEDDED),
    ]
}


def get_task(name: str, **overrides) -> TaskSpec:
    try:
        spec = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}") from None
    return spec.with_options(**overrides) if overrides else spec


def spec_from_config(task_cfg) -> TaskSpec:
    """TaskSpec from a Hydra `task` group node (name + options)."""
    options = dict(task_cfg.get("options") or {})
    return get_task(task_cfg["name"], **options)
