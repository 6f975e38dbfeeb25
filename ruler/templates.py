"""RULER's NIAH templates (its scripts/data/synthetic/constants.py and niah.py), filled in by the generators.

When one value is asked, RULER rewrites its template in the singular (niah.py: when
num_needle_q x num_needle_v == 1, four string replacements in this order and the value
type without its "s"); `singular` does the same to each of our strings.
"""

NEEDLE = "One of the special magic {type_value} for {key} is: {value}."
# The embedded model's needle: the key word directly before its value ("ash5639"), so the
# lookup is one induction step (the token after the key) instead of a copy three tokens
# past it, which a 1M-parameter model did not learn to bind (models/README.md).
TAGGED_NEEDLE = "One of the special magic {type_value} is: {key}{value}."
NEEDLE_TEMPLATES = {"ruler": NEEDLE, "tagged": TAGGED_NEEDLE}
# What joins a key to its value in a gold answer, per answer format ("values" has no key).
ANSWER_LINKS = {"keyed": ": ", "mirror": " is: ", "tagged": ""}
INSTRUCTION = (
    "Some special magic {type_value} are hidden within the following text. "
    "Make sure to memorize it. I will quiz you about the {type_value} afterwards.\n"
)
QUESTION = "What are all the special magic {type_value} for {query} mentioned in the provided text?"
ANSWER_PREFIX = " The special magic {type_value} for {query} mentioned in the provided text are"
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

ORDINALS = (
    "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
    "ninth", "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth",
)
# Later turns may name needles by their order of appearance instead of repeating the key,
# so that a scorer cannot find them by lexical overlap with the question.
ORDINAL_QUERY = "the {ordinal} key mentioned in the text"


# RULER's singular rewrite, in its order; "are" after "are all" so that "are all" becomes "is"
SINGULAR_REPLACEMENTS = (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer"))
WORDINGS = ("ruler", "plural")  # ruler: singular when one value is asked, as RULER; plural: always (the embedded model's)


def singular(template: str) -> str:
    for old, new in SINGULAR_REPLACEMENTS:
        template = template.replace(old, new)
    return template


def type_value_word(value_kind: str, values: int, wording: str = "ruler") -> str:
    """"numbers" / "uuids", or "number" / "uuid" when RULER's wording asks for one value."""
    word = "numbers" if value_kind == "numbers" else "uuids"
    return word[:-1] if wording == "ruler" and values == 1 else word


def instruction(value_kind: str, asked_values: int, wording: str = "ruler") -> str:
    """The instruction before the context; singular when the whole conversation asks one value."""
    text = INSTRUCTION if wording != "ruler" or asked_values != 1 else singular(INSTRUCTION)
    return text.format(type_value=type_value_word(value_kind, asked_values, wording))


def question_and_prefix(value_kind: str, query: str, asked_values: int, wording: str = "ruler") -> tuple[str, str]:
    """A turn's question and answer prefix; singular when the turn asks one value."""
    one = wording == "ruler" and asked_values == 1
    word = type_value_word(value_kind, asked_values, wording)
    question, prefix = (singular(QUESTION), singular(ANSWER_PREFIX)) if one else (QUESTION, ANSWER_PREFIX)
    return question.format(type_value=word, query=query), prefix.format(type_value=word, query=query)


def join_queries(queries: list[str]) -> str:
    if len(queries) == 1:
        return queries[0]
    return ", ".join(queries[:-1]) + ", and " + queries[-1]
