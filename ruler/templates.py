"""RULER's NIAH templates (REFERENCE.md section 5), filled in by the generators."""

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


def join_queries(queries: list[str]) -> str:
    if len(queries) == 1:
        return queries[0]
    return ", ".join(queries[:-1]) + ", and " + queries[-1]
