"""Train the learned-relevance probe (make probe) on labels the model itself produces.

For each sample of the repair setting: the context is prefilled, the turn-1 question is the
observation window, and the turn-2 question plus its gold answer are the later tokens whose
attention labels the context rows (needed = the fewest rows holding `mass` of it, per head;
0.5 by default: the embedded model's later attention is diffuse, and at 0.9 three rows in four
were "needed"). One
logistic regression per layer is fitted on the training samples (class-balanced), and its
held-out label accuracy, recall of needed rows and the same recall for SnapKV's window score at
the same budget are reported and saved with the weights.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from tqdm import tqdm

from idlekv.retention.probe import STAT_FEATURES, ProbeWeights, row_features
from idlekv.retention.trace import capture_trace
from ruler import generate
from ruler.render import encode, render


def labelled_sample(model, tokenizer, sample, mass: float) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: features (heads, n, F), needed labels (heads, n), window max attention (heads, n)."""
    gold = [turn.gold_answer(sample.options.get("answer_format", "values")) for turn in sample.turns]
    rendered = render(sample, tokenizer)
    context = encode(tokenizer, rendered.prompt_text)
    window = encode(tokenizer, rendered.turn_texts[0]) + encode(tokenizer, gold[0])  # turn 1 and its answer
    later = encode(tokenizer, rendered.turn_texts[1]) + encode(tokenizer, gold[1])  # turn 2 and its answer
    trace, inputs = capture_trace(model, context, later, window)
    needed = trace.needed(mass)
    features = [row_features(inputs, layer).cpu() for layer in range(inputs.num_layers)]
    return features, [needed[layer] for layer in range(inputs.num_layers)], [f[..., STAT_FEATURES.index("log_window_max") - len(STAT_FEATURES)] for f in features]


def fit(features: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list]:
    """Class-balanced logistic regression on standardised features; returns (w, b, mean, std, curve)."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    x, y = (features - mean) / std, labels.float()
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    pos_weight = ((1 - y).sum() / y.sum().clamp_min(1)).clamp(max=1e4)
    opt = torch.optim.Adam([w, b], lr=lr)
    curve = []
    for epoch in range(epochs):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, pos_weight=pos_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if epoch % max(1, epochs // 20) == 0 or epoch == epochs - 1:
            curve.append({"epoch": epoch, "loss": round(loss.item(), 5)})
    return w.detach(), b.detach(), mean, std, curve


def recall_at_budget(scores: torch.Tensor, needed: torch.Tensor, budget: int) -> float:
    top = torch.zeros_like(needed).scatter(-1, scores.topk(budget, dim=-1).indices, True)
    return float((top & needed).sum() / needed.sum().clamp_min(1))


def train_probe(model, tokenizer, task: str, length: int, train_samples: int, heldout_samples: int, epochs: int = 300,
                lr: float = 0.05, mass: float = 0.5, budget_fraction: float = 0.1, progress: bool = True) -> ProbeWeights:
    def collect(n: int, base_seed: int, desc: str):
        out = []
        for i in tqdm(range(n), desc=desc, unit="sample", disable=not progress):
            out.append(labelled_sample(model, tokenizer, generate(task, length, i, tokenizer, base_seed), mass))
        return out

    train = collect(train_samples, 7, "probe labels (train)")
    held = collect(heldout_samples, 8, "probe labels (held out)")
    layers = len(train[0][0])
    weights, biases, means, stds, curves, metrics = [], [], [], [], [], []
    for layer in range(layers):
        x = torch.cat([s[0][layer].reshape(-1, s[0][layer].shape[-1]) for s in train])
        y = torch.cat([s[1][layer].reshape(-1) for s in train])
        w, b, mean, std, curve = fit(x, y, epochs, lr)
        weights.append(w), biases.append(b), means.append(mean), stds.append(std), curves.append(curve)
        correct = total = 0
        probe_recall, window_recall = [], []
        for feats, needed, window_max in held:
            logits = ((feats[layer] - mean) / std) @ w + b
            correct += int(((logits > 0) == needed[layer]).sum())
            total += needed[layer].numel()
            budget = max(1, round(budget_fraction * needed[layer].shape[-1]))
            probe_recall.append(recall_at_budget(logits, needed[layer], budget))
            window_recall.append(recall_at_budget(window_max[layer], needed[layer], budget))
        metrics.append({"layer": layer, "train_rows": int(y.numel()), "positive_share": round(float(y.float().mean()), 4),
                        "heldout_label_accuracy": round(correct / total, 4),
                        f"heldout_needed_recall_at_{budget_fraction}": round(sum(probe_recall) / len(probe_recall), 4),
                        f"window_attention_recall_at_{budget_fraction}": round(sum(window_recall) / len(window_recall), 4)})
    record = {"task": task, "length": length, "train_samples": train_samples, "heldout_samples": heldout_samples,
              "epochs": epochs, "lr": lr, "label_mass": mass, "features": ["key"] + list(STAT_FEATURES),
              "curves": curves, "heldout": metrics}
    return ProbeWeights(torch.stack(weights), torch.stack(biases), torch.stack(means), torch.stack(stds), record)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the learned-relevance probe on the model's own attention labels.")
    parser.add_argument("--model", default="models/embedded")
    parser.add_argument("--out", default=None, help="default: <model>/relevance_probe.pt")
    parser.add_argument("--task", default="mq_niah_4q_embedded")
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--train-samples", type=int, default=48)
    parser.add_argument("--heldout-samples", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--mass", type=float, default=0.5, help="needed rows hold this share of the later attention, per head")
    args = parser.parse_args(argv)
    from idlekv.config import CONFIG_DIR
    from idlekv.models import load_model

    root = CONFIG_DIR.parent
    lm = load_model(root / args.model, device="cuda" if torch.cuda.is_available() else "cpu")
    probe = train_probe(lm.model, lm.tokenizer, args.task, args.length, args.train_samples, args.heldout_samples, args.epochs, mass=args.mass)
    out = probe.save(root / (args.out or f"{args.model}/relevance_probe.pt"))
    print(json.dumps(probe.record["heldout"], indent=1))
    print(f"saved the probe to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
