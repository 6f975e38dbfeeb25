"""phase01: the full-cache gate (make phase01).

For every (task, needle count, length) of the experiment config, generate samples with
ruler, answer all their turns with the full cache, and record per-turn accuracy. Rows go to
a resumable store under runs/<phase.name>/, with the CSV and the figure rebuilt there from all
rows; `make publish PHASE=phase01_full_cache` puts them in saved_results/ and paper/figures/.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from idlekv.environment import environment
from idlekv.evaluation import answer_sample
from idlekv.results import ResultStore
from phases.common import load_phase_model, locked_model, phase_main
from phases.phase01_full_cache.report import compact, summarize, write_figure
from phases.publish import companion, report_run, write_tables_and_figure
from ruler import generate
from ruler.generation import LengthError
from ruler.tasks import get_task

KEY_FIELDS = ("task", "num_keys", "length", "index")


def cells(phase) -> list[dict]:
    out = []
    for task in phase.tasks:
        for num_keys in task.num_keys:
            for length in phase.lengths:
                for index in range(phase.num_samples):
                    out.append({"task": task.label, "name": task.name, "num_keys": int(num_keys), "length": int(length),
                                "index": index, "options": OmegaConf.to_container(task.options)})
    return out


def expected_cells(config: dict) -> list[dict]:
    return cells(OmegaConf.create(config["phase"]))


def tables(frame, config: dict, csv: Path) -> dict:
    """The summary (n, 95% intervals) and the compact per-sample rows it re-derives from."""
    return {csv: summarize(frame), companion(csv, "rows"): compact(frame)}


def write_outputs(frame, config: dict, csv: Path, figure: Path) -> list[Path]:
    out = tables(frame, config, csv)
    print(out[csv].to_string(index=False))
    title = f"{config['phase']['name']}: seed {config['phase']['base_seed']}"
    return write_tables_and_figure(out, figure, lambda summary, path: write_figure(summary, path, title))


def run(cfg: DictConfig, run_dir: Path) -> Path:
    phase = cfg.phase
    lm = load_phase_model(cfg, "phase01")
    locked = {"model": locked_model(cfg), "phase": OmegaConf.to_container(phase)}
    with ResultStore(run_dir, KEY_FIELDS, config=locked, environment=environment()) as store:
        answer_cells(store, phase, lm)
        store.write_csv(run_dir / "rows.csv")
        return report_run(store, run_dir, locked)[0]


def answer_cells(store: ResultStore, phase: DictConfig, lm) -> None:
    todo = [c for c in cells(phase) if not store.is_done(c)]
    for cell in tqdm(todo, desc=phase.name, unit="sample"):
        num_keys = cell["num_keys"]
        base = get_task(cell["name"])
        # a task that asks all its keys keeps asking all of them at every needle count
        overrides = dict(cell["options"], num_keys=num_keys)
        if base.num_queries == base.num_keys:
            overrides["num_queries"] = num_keys
        row = {k: cell[k] for k in KEY_FIELDS}
        try:
            sample = generate(cell["name"], cell["length"], cell["index"], lm.tokenizer, phase.base_seed, **overrides)
        except LengthError as err:
            store.append({**row, "skipped": str(err)})
            continue
        start = time.perf_counter()
        results = answer_sample(lm.model, lm.tokenizer, sample, phase.max_new_tokens)
        for r in results:
            row[f"turn{r.turn + 1}_accuracy"] = r.accuracy
            row[f"turn{r.turn + 1}_answer"] = r.answer
        row["accuracy"] = sum(r.accuracy for r in results) / len(results)
        row["last_turn_accuracy"] = results[-1].accuracy
        row["prompt_tokens"] = sample.prompt_tokens
        row["seconds"] = round(time.perf_counter() - start, 4)
        store.append(row)


main = phase_main(run, "phases.phase01_full_cache.run", "phase01_full_cache")


if __name__ == "__main__":
    main()
