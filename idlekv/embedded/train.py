"""Train the embedded model (`make tiny-model`): a small Llama (GQA, RoPE) on ruler's
MQ-NIAH conversations (noise haystack), with the project's own tokenizer, in stages (configs/embedded/).

Seeded and resumable: a checkpoint is written every `checkpoint_every` steps to the work
directory; rerunning the same command continues from it. The finished model is saved in
Hugging Face format (safetensors) with its tokenizer and a training record.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from idlekv.embedded.data import Curriculum, conversation, training_batch
from idlekv.embedded.tokenizer import build_tokenizer, single_token_fraction


@dataclass
class TrainConfig:
    out_dir: str = "models/embedded"
    work_dir: str = "runs/tiny-model/embedded"
    layers: int = 4
    hidden: int = 128
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 512
    rope_theta: float = 10000.0
    max_position: int = 4096
    vocab_size: int = 2048
    steps: int = 6000
    tokens_per_step: int = 8192
    lr: float = 2e-3
    warmup: int = 200
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0
    threads: int = 2
    bf16: bool = True
    eval_every: int = 250
    eval_samples: int = 48
    checkpoint_every: int = 250
    max_minutes: float | None = None  # stop (resumably) after this long
    init_from: str | None = None  # start from another run's checkpoint.pt or an exported model folder (fine-tuning)
    stop_after: int | None = None  # stop (and save) at this step; the schedule still spans `steps`
    curriculum: Curriculum = field(default_factory=Curriculum)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training options {unknown}")
        if "curriculum" in d and isinstance(d["curriculum"], dict):
            cur = dict(d["curriculum"])
            for key in ("needle_counts", "hold_needle_counts", "pair_counts", "distractor_counts", "eval_lengths"):
                if key in cur:
                    cur[key] = tuple(cur[key])
            d["curriculum"] = Curriculum(**cur)
        return cls(**d)


def model_config(cfg: TrainConfig, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_position, rope_theta=cfg.rope_theta, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        architectures=["LlamaForCausalLM"],
    )


def learning_rate(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def weighted_loss(logits: torch.Tensor, input_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, weighted per target token."""
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:], reduction="none")
    w = weights[:, 1:]
    return (losses * w).sum() / w.sum().clamp_min(1e-6)


@torch.no_grad()
def heldout_accuracy(model, tokenizer, samples, device, answer_format: str) -> dict:
    """Teacher-forced accuracy on held-out samples: the last turn's answer, token by token and whole,
    and in a conversation the first turn's too (a later turn can lean on the earlier gold answers)."""
    model.eval()
    last, first = _Hits(), _Hits()
    for sample in samples:
        ids, _, ranges = conversation(sample, tokenizer, answer_format)
        logits = model(torch.tensor([ids], device=device)).logits[0]
        last.add(logits, ids, ranges[-1])
        if len(ranges) > 1:
            first.add(logits, ids, ranges[0])
    model.train()
    out = {"heldout_exact": last.exact / len(samples), "heldout_token_acc": last.correct / last.total}
    if first.total:
        out |= {"first_turn_exact": first.exact / len(samples), "first_turn_token_acc": first.correct / first.total}
    return out


class _Hits:
    """Teacher-forced hits of answers: tokens right, tokens, and answers right in full."""

    def __init__(self):
        self.correct = self.total = self.exact = 0

    def add(self, logits: torch.Tensor, ids: list[int], answer: tuple[int, int]) -> None:
        a, b = answer
        hits = int((logits[a - 1 : b - 1].argmax(-1).cpu() == torch.tensor(ids[a:b])).sum())
        self.correct, self.total, self.exact = self.correct + hits, self.total + b - a, self.exact + int(hits == b - a)


@torch.no_grad()
def echo_accuracy(model, tokenizer, samples, device) -> float:
    """Teacher-forced accuracy on the values of the echo listing (the recall auxiliary)."""
    import random as _random

    from idlekv.embedded.data import echo_sequence

    model.eval()
    correct = total = 0
    for i, sample in enumerate(samples):
        ids, mask = echo_sequence(sample, tokenizer, _random.Random(i))
        logits = model(torch.tensor([ids], device=device)).logits[0, :-1].argmax(-1).cpu()
        target, m = torch.tensor(ids[1:]), torch.tensor(mask[1:]).bool()
        correct, total = correct + int((logits[m] == target[m]).sum()), total + int(m.sum())
    model.train()
    return correct / max(total, 1)


def heldout_set(cfg: TrainConfig, tokenizer, length: int = 1024):
    from ruler import generate

    # Base seed 10**6: disjoint from the phases' seeds (0) and the training stream's.
    return [generate(cfg.curriculum.task, length, i, tokenizer, base_seed=10**6) for i in range(cfg.eval_samples)]


RUN_ONLY_FIELDS = ("max_minutes", "threads", "eval_every", "checkpoint_every", "stop_after", "out_dir", "work_dir")  # do not change what is learned


def identity(cfg: TrainConfig) -> dict:
    return {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY_FIELDS}


def save_checkpoint(path: Path, model, optimizer, step: int, cfg: TrainConfig, log: list, elapsed: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "config": asdict(cfg), "log": log, "elapsed": elapsed}, tmp)
    tmp.replace(path)


def initial_weights(path: Path, device: str) -> dict:
    """Weights to fine-tune from: another run's checkpoint.pt, or an exported model folder (e.g. models/embedded)."""
    if path.is_dir():
        from safetensors.torch import load_file

        weights = load_file(str(path / "model.safetensors"), device=device)
        if "lm_head.weight" not in weights and "model.embed_tokens.weight" in weights:  # tied embeddings are saved once
            weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
        return weights
    return torch.load(path, map_location=device, weights_only=False)["model"]


def export(model, tokenizer, cfg: TrainConfig, log: list, elapsed: float, step: int, tokens_seen: int) -> Path:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}), {cfg.threads} threads"
    record = {
        "config": asdict(cfg), "steps": step, "tokens_seen": tokens_seen, "train_seconds": round(elapsed, 1),
        "hardware": device, "torch": torch.__version__, "parameters": sum(p.numel() for p in model.parameters()),
        "final": log[-1] if log else None, "log": log,
    }
    (out / "training_record.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return out


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    from tqdm import tqdm
    from transformers import LlamaForCausalLM

    torch.set_num_threads(cfg.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = build_tokenizer(cfg.vocab_size)
    if single_token_fraction(tokenizer) < 1.0:
        raise RuntimeError("the embedded tokenizer splits some key words; raise vocab_size")
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(model_config(cfg, tokenizer)).to(device)
    model.config._attn_implementation = "sdpa"
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    ckpt_path = Path(cfg.work_dir) / "checkpoint.pt"
    step, log, elapsed = 0, [], 0.0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        if identity(TrainConfig.from_dict(state["config"])) != identity(cfg):
            raise RuntimeError(f"{ckpt_path} was written with another config; remove it or use another work_dir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, log, elapsed = state["step"], state["log"], state["elapsed"]
        print(f"resuming from step {step} ({elapsed / 60:.1f} min done)", flush=True)
    elif cfg.init_from:
        model.load_state_dict(initial_weights(Path(cfg.init_from), device))
        print(f"initialised from {cfg.init_from}", flush=True)
    long_length, short_length = cfg.curriculum.eval_lengths
    heldout = heldout_set(cfg, tokenizer, length=long_length)
    heldout_short = heldout_set(cfg, tokenizer, length=short_length)  # progress is visible here first
    answer_format = cfg.curriculum.answer_format or heldout[0].options["answer_format"]
    model.train()
    last = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
    bar = tqdm(total=last, initial=step, desc="tiny-model", unit="step", disable=not progress, dynamic_ncols=True)
    start, tokens_seen, metrics = time.time() - elapsed, step * cfg.tokens_per_step, {}
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cfg.bf16)
    while step < last:
        input_ids, weights = training_batch(cfg.curriculum, tokenizer, step, cfg.steps, cfg.tokens_per_step, cfg.seed)
        input_ids, weights = input_ids.to(device), weights.to(device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        with autocast:
            logits = model(input_ids).logits
        loss = weighted_loss(logits, input_ids, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        tokens_seen += int((weights > 0).sum())
        if step % cfg.eval_every == 0 or step == last:
            with autocast:
                metrics = heldout_accuracy(model, tokenizer, heldout, device, answer_format)
                short = heldout_accuracy(model, tokenizer, heldout_short, device, answer_format)
                metrics["short_exact"], metrics["short_token_acc"] = short["heldout_exact"], short["heldout_token_acc"]
                if cfg.curriculum.echo_fraction:
                    metrics["echo_value_acc"] = echo_accuracy(model, tokenizer, heldout_short, device)
            log.append({"step": step, "loss": round(loss.item(), 4), "minutes": round((time.time() - start) / 60, 2), **metrics})
            print(json.dumps(log[-1]), flush=True)
        bar.set_postfix(loss=f"{loss.item():.3f}", len=input_ids.shape[1], **{k: f"{v:.2f}" for k, v in metrics.items()})
        bar.update(1)
        out_of_time = cfg.max_minutes is not None and (time.time() - start) / 60 >= cfg.max_minutes
        if step % cfg.checkpoint_every == 0 or step == last or out_of_time:
            save_checkpoint(ckpt_path, model, optimizer, step, cfg, log, time.time() - start)
        if out_of_time:
            print(f"stopping at step {step} after {cfg.max_minutes} min; rerun to continue", flush=True)
            break
    bar.close()
    return export(model, tokenizer, cfg, log, time.time() - start, step, tokens_seen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the embedded model.")
    parser.add_argument("--config", help="YAML file of TrainConfig fields (e.g. configs/embedded/default.yaml)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override fields, e.g. steps=200 threads=1")
    args = parser.parse_args(argv)
    data = {}
    if args.config:
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(OmegaConf.load(args.config), resolve=True)
    for item in args.set:
        key, value = item.split("=", 1)
        try:
            data[key] = json.loads(value)  # numbers, booleans, lists, null
        except json.JSONDecodeError:
            data[key] = value  # plain strings (paths)
    out = train(TrainConfig.from_dict(data))
    print(f"saved the model to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
