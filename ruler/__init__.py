"""RULER-compatible synthetic tasks with annotated needles (our own code, RULER's formats).

The NIAH family (single, multikey, multivalue, multiquery) and the split-query MQ-NIAH
family used by the repair experiments, where later turns ask for other needles than the
first. Every needle carries its character span, its token span in the prefilled prompt,
its depth and the turns that ask for it.
"""

from ruler.generation import generate, generate_many, partitions
from ruler.sample import Needle, Sample, Turn
from ruler.tasks import TASKS, TaskSpec, get_task

__all__ = ["Needle", "Sample", "TASKS", "TaskSpec", "Turn", "generate", "generate_many", "get_task", "partitions"]
