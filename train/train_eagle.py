"""Train an EAGLE-style head for the bundled target, SmolLM2-135M-Instruct, on 2 CPU cores.

    .venv/bin/python train/train_eagle.py --minutes 40

The head (engine/eagle.py EagleHead): fc over [embedding(x_{p+1}); h_p] -> one Llama decoder layer
(the target's sizes) -> a feature f_{p+1}, scored by an lm_head over
the V_d tokens the target predicts most (rows of the target's output layer, frozen), ids mapped back by d2t.

Phases, each with a share of the wall-clock budget (`--minutes`, everything included):
1. data: the target (bf16, batched greedy generate with KV cache) answers prompts made from templates (train/prompts.py); then text that ships with
   Python (pydoc topics, stdlib docstrings: distill_draft.disk_texts) in the assistant turn of a chat.
   The target's last hidden states h (after its final norm) are caught on that norm while it generates
   (answers) or in one forward (text): a second pass over the answers would cost as much as generating them.
2. train: at each answer position p the head reads (h_p, x_{p+1}) and is trained to give h_{p+1}
   (smooth L1) and the target's distribution over the kept tokens at p+1 (soft cross-entropy against
   the target's own logits h_{p+1} W^T), with uniform noise on the input features (EAGLE, arXiv
   2401.15077, sec. 4). A second, unrolled step feeds the head its own feature f_{p+1} with x_{p+2},
   attending to the first step's keys at positions <= p+1 and to itself only: exactly what drafting the
   second token sees (EAGLE-3's training-time test, arXiv 2503.01840, in its two-step form).
3. eval: the fp32 target answers the held-out calibration prompts greedily (first user turn; never
   trained on); acceptance = share of answer positions where the head's top-1 (fed the fp32 target's h)
   is the target's next greedy token (step 1), and the same for the unrolled second step.
4. save: bf16 safetensors (fc, layer, lm_head, d2t), config.json and a model card in --out
   (default ./eagle-head; the committed head, specmemo_plan/drafts/smollm2-135m-eagle, only with --force).

Progress goes to stderr; intermediate data to --work (default /tmp/specmemo-eagle).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from distill_draft import (T0, TARGET, check_out, chat_ids, disk_texts, held_out_prompts, log,  # noqa: E402
                           target_references)
from prompts import make_prompts  # noqa: E402

from engine.eagle import EagleHead  # noqa: E402

DEFAULT_OUT = "eagle-head"
TEXT_ASKS = ["Tell me more.", "Can you explain this topic?", "Describe it in detail.", "Explain how this works."]


# ----------------------------------------------------------------------------------------- data


def features(model, seqs: list[list[int]], batch: int) -> list[torch.Tensor]:
    """The target's last hidden states [n, H] (bf16) of each sequence, right-padded batches."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    result: dict[int, torch.Tensor] = {}
    for b in range(0, len(order), batch):
        idx = order[b:b + batch]
        n = max(len(seqs[i]) for i in idx)
        ids = torch.zeros((len(idx), n), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, : len(seqs[i])] = torch.tensor(seqs[i])
            mask[r, : len(seqs[i])] = 1
        with torch.no_grad():
            h = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        for r, i in enumerate(idx):
            result[i] = h[r, : len(seqs[i])].to(torch.bfloat16).clone()
    return [result[i] for i in range(len(seqs))]


def answers_with_features(model, tok, prompts: list[str], deadline: float, args, eos: set[int]):
    """Greedy answers of the target (batched generate, KV cache, left padding) and its last hidden states
    at every position, caught on the final norm while it generates: one forward per token, not two."""
    from distill_draft import left_pad

    encoded = [e for e in (chat_ids(tok, p) for p in prompts) if len(e) <= args.max_prompt]
    caught: list[torch.Tensor] = []
    hook = model.model.norm.register_forward_hook(lambda mod, inp, out: caught.append(out.detach().to(torch.bfloat16)))
    samples, feats, n_tok, t0 = [], [], 0, time.time()
    try:
        chunks = []
        for start in range(0, len(encoded), args.gen_batch * 8):  # similar lengths together, order kept random
            group = sorted(encoded[start:start + args.gen_batch * 8], key=len)
            chunks += [group[i:i + args.gen_batch] for i in range(0, len(group), args.gen_batch)]
        for b, batch in enumerate(chunks):
            if time.time() > deadline:
                break
            caught.clear()
            ids, mask = left_pad(batch, tok.pad_token_id)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_new,
                                     do_sample=False, pad_token_id=tok.pad_token_id)
            h = torch.cat(caught, 1)  # [B, prompt + generated - 1, H]: the last token is never fed
            P = ids.shape[1]
            for r, prompt in enumerate(batch):
                ans = out[r, P:].tolist()
                n = next((j + 1 for j, t in enumerate(ans) if t in eos), len(ans))
                if n < 2:
                    continue
                pad = P - len(prompt)
                seq = prompt + ans[:n]
                samples.append({"ids": seq, "pos0": len(prompt) - 1, "src": 0})
                feats.append(h[r, pad: pad + len(seq) - 1].clone())  # h at positions 0 .. L-2
                n_tok += n
            if b % 5 == 0:
                log(f"gen batch {b + 1}/{len(chunks)}: {len(samples)} answers, {n_tok} tokens "
                    f"({n_tok / (time.time() - t0):.0f} tok/s)")
    finally:
        hook.remove()
    log(f"generation done: {len(samples)} answers, {n_tok} answer tokens")
    return samples, feats


def text_samples(tok, texts: list[str], limit: int, seed: int) -> list[dict]:
    r = random.Random(seed)
    items = []
    for text in texts:
        prompt = chat_ids(tok, r.choice(TEXT_ASKS))
        body = tok(text, add_special_tokens=False)["input_ids"][:limit]
        if len(body) >= 16:
            items.append({"ids": prompt + body, "pos0": len(prompt) - 1})
    return items


def make_data(args, tok, eos, held) -> dict:
    from engine.loading import load_model

    target = load_model(TARGET, dtype="bf16").model
    log("target loaded (bf16)")
    texts = disk_texts()
    prompts = [p for p in make_prompts(args.prompts, args.seed, texts) if p not in held]
    log(f"{len(prompts)} prompts, {len(texts)} on-disk paragraphs; answering until {args.gen_until:.0%} of the budget")
    samples, feats = answers_with_features(target, tok, prompts, T0 + args.gen_until * args.minutes * 60, args, eos)
    deadline = T0 + args.data_until * args.minutes * 60
    text = text_samples(tok, texts[len(texts) // 2:], args.text_tokens, args.seed)
    random.Random(args.seed).shuffle(text)
    done_text = []
    for b in range(0, len(text), 64):  # text features until the data phase ends
        if time.time() > deadline:
            break
        chunk = text[b:b + 64]
        feats += features(target, [s["ids"] for s in chunk], args.feature_batch)
        done_text += [{**s, "src": 1} for s in chunk]
    samples += done_text
    log(f"data: {len(samples) - len(done_text)} answers, {len(done_text)} passages, "
        f"{sum(len(s['ids']) - 1 - s['pos0'] for s in samples)} trained positions")
    lm = target.lm_head.weight.detach().float().clone()
    return {"samples": samples, "features": feats, "lm_head": lm}


# ----------------------------------------------------------------------------------------- model


def head_config(tc, vocab_keep: int) -> dict:
    return {"architectures": ["EagleLlamaForCausalLM"], "model_type": "llama", "hidden_size": tc.hidden_size,
            "intermediate_size": tc.intermediate_size, "num_hidden_layers": 1,
            "num_attention_heads": tc.num_attention_heads, "num_key_value_heads": tc.num_key_value_heads,
            "head_dim": tc.hidden_size // tc.num_attention_heads, "vocab_size": tc.vocab_size,
            "draft_vocab_size": vocab_keep, "bias": False, "hidden_act": "silu", "rms_norm_eps": tc.rms_norm_eps,
            "max_position_embeddings": tc.max_position_embeddings,
            "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}, "tie_word_embeddings": False}


def make_head(cfg: dict, lm_rows: torch.Tensor, d2t: torch.Tensor) -> EagleHead:
    """Random layer (std 0.02; the target's last layer as a start gave features 1000x too large: its MLP
    expects the residual stream, not normed states), fc passing h through, lm_head the target's rows."""
    head = EagleHead(cfg)
    for module in head.layers[0].modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, 0, 0.02)
    with torch.no_grad():
        H = cfg["hidden_size"]
        head.fc.weight.normal_(0, 0.02)
        head.fc.weight[:, H:] += torch.eye(H)  # start as "the feature is h": the layer learns the step
        head.lm_head.weight.copy_(lm_rows)
    head.lm_head.weight.requires_grad_(False)
    head.d2t.copy_(d2t)
    return head


class Concat:
    """The part of transformers' Cache protocol the layer calls: keys of earlier steps, then these."""

    def __init__(self):
        self.kv: dict[int, tuple] = {}

    def update(self, k, v, layer_idx, *args, **kwargs):
        if layer_idx in self.kv:
            k0, v0 = self.kv[layer_idx]
            k, v = torch.cat([k0, k], 2), torch.cat([v0, v], 2)
        self.kv[layer_idx] = (k, v)
        return k, v


def collate(samples, feats, idx):
    n = max(len(samples[i]["ids"]) for i in idx)
    B = len(idx)
    H = feats[idx[0]].shape[1]
    ids = torch.zeros((B, n), dtype=torch.long)
    h = torch.zeros((B, n, H), dtype=torch.bfloat16)
    loss_mask = torch.zeros((B, n), dtype=torch.bool)
    for r, i in enumerate(idx):
        s = samples[i]
        L = len(s["ids"])
        ids[r, :L] = torch.tensor(s["ids"])
        h[r, : len(feats[i])] = feats[i]  # answers: h at 0 .. L-2 (the last token was never fed)
        loss_mask[r, s["pos0"]: L - 2] = True  # pair p predicts h_{p+1}; step 2 needs p+2 <= L-1
    return ids, h.float(), loss_mask


def step_losses(head, embed, lm_t, ids, h, mask, noise: float, unroll: bool):
    """(loss, steps) of one batch; steps: per step (head's top-1 over the kept tokens [N], the target's
    top-1 over them [N], the target's features it was trained towards [N, H])."""
    B, n, H = h.shape
    pos = torch.arange(n).expand(B, n)
    tok = torch.zeros_like(ids)
    tok[:, :-1] = ids[:, 1:]  # x_{p+1} at pair p
    want = torch.zeros_like(h)
    want[:, :-1] = h[:, 1:]  # h_{p+1}: what the feature made at p should be
    e = embed(tok)
    cache = Concat()
    # step 1: the target's features (noisy) as input, causal over the head's own keys
    inp = h + (torch.rand_like(h) - 0.5) * 2 * noise if noise else h
    causal = torch.ones(n, n, dtype=torch.bool).tril()[None, None].expand(B, 1, n, n)
    f = head(e, inp, pos, causal, cache)  # [B, n, H]
    runs = [(f, mask)]
    if unroll:  # step 2 at j = p+1: the head's own f made at p, keys of step 1 at < j and itself (as drafting)
        f_in = torch.zeros_like(f)
        f_in[:, 1:] = f[:, :-1]
        see = torch.cat([torch.ones(n, n, dtype=torch.bool).tril(-1), torch.eye(n, dtype=torch.bool)], 1)
        f2 = head(e, f_in, pos, see[None, None].expand(B, 1, n, 2 * n), cache)
        m2 = torch.zeros_like(mask)
        m2[:, 1:] = mask[:, :-1]
        runs.append((f2, m2))
    loss, steps = 0.0, []
    for feat, m in runs:
        goal = want[m]  # [N, H]
        t_logits = (goal @ lm_t).float()  # the target's own logits over the kept tokens
        logits = (feat[m] @ lm_t).float()
        soft_ce = -(torch.softmax(t_logits, -1) * F.log_softmax(logits, -1)).sum(-1).mean()
        loss = loss + F.smooth_l1_loss(feat[m].float(), goal.float()) + 0.2 * soft_ce
        steps.append((logits.argmax(-1), t_logits.argmax(-1), goal))
    return loss, steps


def batches(samples, budget: int, rng: random.Random):
    order = sorted(range(len(samples)), key=lambda i: len(samples[i]["ids"]))
    groups, cur, longest = [], [], 0
    for i in order:
        L = len(samples[i]["ids"])
        if cur and max(longest, L) * (len(cur) + 1) > budget:
            groups.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, L)
    if cur:
        groups.append(cur)
    while True:
        rng.shuffle(groups)
        yield from groups


# ----------------------------------------------------------------------------------------- eval


def evaluate(head, embed, lm_full: torch.Tensor, refs, feats) -> dict:
    """Step-1 and step-2 top-1 acceptance on the held-out references (fp32 features), per category: the
    head's token (its top-1 mapped by d2t) against the fp32 target's greedy token (full vocabulary)."""
    head.eval()
    per: dict[str, list[int]] = {}
    lm_t = head.lm_head.weight.t().float()
    with torch.no_grad():
        for ref, h in zip(refs, feats):
            ids = torch.tensor([ref["prompt"] + ref["answer"]])
            n = ids.shape[1]
            mask = torch.zeros((1, n), dtype=torch.bool)
            mask[0, len(ref["prompt"]) - 1: n - 2] = True
            if not mask.any():
                continue
            _, steps = step_losses(head, embed, lm_t, ids, h[None].float(), mask, 0.0, True)
            c = per.setdefault(ref["category"], [0, 0, 0])
            for s, (pred, _, goal) in enumerate(steps):
                greedy = (goal.float() @ lm_full.t()).argmax(-1)
                c[s] += int((head.d2t[pred] == greedy).sum())
            c[2] += int(mask.sum())
    total = [sum(v[i] for v in per.values()) for i in range(3)]
    frac = lambda a: (round(a[0] / a[2], 4), round(a[1] / a[2], 4))  # noqa: E731
    return {"step1": frac(total)[0], "step2": frac(total)[1], "positions": total[2],
            "per_category": {k: frac(v) for k, v in sorted(per.items())}}


def fp32_features(target32, refs) -> list[torch.Tensor]:
    out = []
    with torch.no_grad():
        for ref in refs:
            ids = torch.tensor([ref["prompt"] + ref["answer"]])
            out.append(target32.model(input_ids=ids).last_hidden_state[0])
    return out


# ----------------------------------------------------------------------------------------- main


def model_card(s: dict, cfg: dict, size: int) -> str:
    """The head's README.md, from training.json's numbers."""
    ev, a = s["eval"], s["args"]
    per = ", ".join(f"{k} {v[0]:.2f} / {v[1]:.2f}" for k, v in ev["per_category"].items())
    return f"""# smollm2-135m-eagle

An EAGLE-style draft head for the bundled target **SmolLM2-135M-Instruct** (`bundled:smollm2-135m-instruct`),
made by `train/train_eagle.py` in this repository. The engine loads it as `bundled:smollm2-135m-eagle`
(`--draft-method eagle` is read from `config.json` by itself); it has no tokenizer or embedding of its own:
it reads the target's embedding and hidden states.

## Architecture

fc Linear(2 x {cfg['hidden_size']} -> {cfg['hidden_size']}, no bias) over [embedding(x_(p+1)); h_p], h_p the target's
last hidden state (after its final norm); one Llama decoder layer (hidden {cfg['hidden_size']},
{cfg['num_attention_heads']} heads, {cfg['num_key_value_heads']} KV heads, MLP {cfg['intermediate_size']}, no input norm,
as EAGLE-1); an lm_head over the {s['kept_vocab']} tokens the target predicted most often in the training data
({s['kept_coverage']:.2%} of the trained positions' tokens), rows of the target's output layer, frozen; `d2t`
maps them back to target ids. {s['parameters']:,} parameters in bf16: {size / 1e6:.1f} MB.

## Data (generated by the script; nothing downloaded)

{s['answers']} greedy answers of the target (bf16, batched generate, up to {a['max_new']} tokens) to prompts made
from templates (`train/prompts.py`), its hidden states caught while it generated; {s['passages']} passages of
text shipped with Python (pydoc topics, stdlib docstrings) in the assistant turn of a chat, one forward each;
{s['trained_positions']:,} trained positions in all.

## Training

{s['steps']} AdamW steps ({s['positions_seen']:,} positions, {s['train_minutes']} min on 2 CPU cores, bf16
autocast, lr {a['lr']} cosine): smooth L1 towards h_(p+1) plus 0.2 x soft cross-entropy against the target's
own distribution over the kept tokens, uniform input noise of {a['noise']} x the feature RMS, and a second
unrolled step fed the head's own feature (what drafting the second token sees). Everything, data
included, took {s['total_minutes']} min (`--minutes {a['minutes']}`).

## Evaluation (held-out calibration prompts, never trained on)

The fp32 target's greedy answers (up to {a['eval_tokens']} tokens) to the first turn of the 96 calibration
prompts (`specmemo_plan/data/calibration_prompts.json`); at each of {ev['positions']:,} answer positions the head,
fed the target's own hidden states, drafts the next token (step 1), and from its own feature the one after
(step 2); acceptance = share equal to the target's greedy token (full vocabulary).

- **step 1: {ev['step1']:.3f}**, step 2: {ev['step2']:.3f}
- per category (step 1 / step 2): {per}

Reproduce: `.venv/bin/python train/train_eagle.py --minutes {a['minutes']} --seed {a['seed']}` (writes
`./eagle-head`; `--out specmemo_plan/drafts/smollm2-135m-eagle --force` replaces this one).
"""


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=40.0, help="wall-clock budget for everything")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--force", action="store_true", help="allow --out inside the package (the committed head)")
    ap.add_argument("--work", default="/tmp/specmemo-eagle")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse-data", action="store_true")
    ap.add_argument("--gen-until", type=float, default=0.36, help="answer generation ends at this share")
    ap.add_argument("--data-until", type=float, default=0.45, help="text features end at this share")
    ap.add_argument("--eval-reserve", type=float, default=5.0, help="minutes kept for eval and saving")
    ap.add_argument("--prompts", type=int, default=30000)
    ap.add_argument("--gen-batch", type=int, default=96)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--max-prompt", type=int, default=200)
    ap.add_argument("--text-tokens", type=int, default=192)
    ap.add_argument("--feature-batch", type=int, default=16, help="sequences per forward for the text's hidden states")
    ap.add_argument("--eval-tokens", type=int, default=128)
    ap.add_argument("--vocab-keep", type=int, default=8192)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-tokens", type=int, default=3072)
    ap.add_argument("--noise", type=float, default=0.1, help="uniform input-feature noise, times the feature RMS")
    ap.add_argument("--no-unroll", action="store_true")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    out = check_out(args.out, args.force)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from engine.loading import load_model, load_tokenizer

    tok = load_tokenizer(TARGET)
    tok.padding_side = "left"
    eos = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
    held = {p["text"] for p in held_out_prompts()}
    data_file = work / "data.pt"
    if args.reuse_data and data_file.is_file():
        data = torch.load(data_file)
        log(f"reusing {data_file}")
    else:
        data = make_data(args, tok, eos, held)
        torch.save(data, data_file)
    samples, feats, lm = data["samples"], data["features"], data["lm_head"]

    # ---- kept vocabulary: the target's most frequent greedy tokens at trained positions (+ EOS)
    counts = torch.zeros(lm.shape[0], dtype=torch.long)
    for s in samples:
        counts.index_add_(0, torch.tensor(s["ids"][s["pos0"] + 1:]), torch.ones(len(s["ids"]) - s["pos0"] - 1, dtype=torch.long))
    keep = torch.unique(torch.cat([counts.argsort(descending=True)[: args.vocab_keep - len(eos)], torch.tensor(sorted(eos))]))
    keep = keep[: args.vocab_keep]
    coverage = counts[keep].sum().item() / counts.sum().item()
    log(f"kept vocabulary {len(keep)} tokens: {coverage:.4f} of the trained tokens")

    target32 = load_model(TARGET, dtype="fp32").model
    cfg = head_config(target32.config, len(keep))
    head = make_head(cfg, lm[keep], keep)
    embed = target32.model.embed_tokens.requires_grad_(False)
    rms = torch.cat([f[:64].float() for f in feats[:200]]).pow(2).mean().sqrt().item()
    log(f"head: {sum(p.numel() for p in head.parameters()) / 1e6:.2f}M parameters; feature rms {rms:.3f}")

    # ---- train until the eval reserve
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    end = T0 + args.minutes * 60 - args.eval_reserve * 60
    rng = random.Random(args.seed)
    stream = batches(samples, args.batch_tokens, rng)
    lm_t = head.lm_head.weight.t()
    t_train, step, seen, ema, acc = time.time(), 0, 0, None, [0, 0, 0]
    span = max(end - t_train, 1.0)
    head.train()
    while time.time() < end:
        frac = (time.time() - t_train) / span
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, step / 30) * max(0.05, 0.5 * (1 + math.cos(math.pi * frac)))
        ids, h, mask = collate(samples, feats, next(stream))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, steps = step_losses(head, embed, lm_t, ids, h, mask, args.noise * rms, not args.no_unroll)
        hits = [int((a == b).sum()) for a, b, _ in steps] + [0]
        h1, h2, n = hits[0], hits[1], int(mask.sum())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        opt.step()
        step += 1
        seen += n
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        acc = [0.9 * acc[0] + h1, 0.9 * acc[1] + h2, 0.9 * acc[2] + n]
        if step % 20 == 0:
            log(f"step {step}: loss {ema:.3f}, train top-1 step 1 {acc[0] / acc[2]:.3f}, step 2 {acc[1] / acc[2]:.3f}, "
                f"{seen / (time.time() - t_train):.0f} positions/s")
    train_minutes = (time.time() - t_train) / 60
    log(f"trained {step} steps, {seen} positions, {train_minutes:.1f} min")

    # ---- eval on the weights as saved (bf16), run in fp32
    head = head.to(torch.bfloat16).to(torch.float32)
    refs = target_references(target32, tok, args)
    result = evaluate(head, embed, target32.lm_head.weight.detach().float(), refs, fp32_features(target32, refs))
    log(f"held-out acceptance: step 1 {result['step1']:.3f}, step 2 {result['step2']:.3f} over "
        f"{result['positions']} positions; {result['per_category']}")

    # ---- save
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in head.state_dict().items()}
    state["d2t"] = keep.clone()
    save_file(state, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    stats = {"parameters": sum(p.numel() for p in head.parameters()), "kept_vocab": len(keep),
             "kept_coverage": round(coverage, 4), "answers": sum(1 for s in samples if s["src"] == 0),
             "passages": sum(1 for s in samples if s["src"] == 1),
             "trained_positions": sum(len(s["ids"]) - 2 - s["pos0"] for s in samples), "steps": step,
             "positions_seen": seen, "train_minutes": round(train_minutes, 1), "final_loss": round(ema or 0, 4),
             "total_minutes": round((time.time() - T0) / 60, 1), "eval": result,
             "args": {k: v for k, v in vars(args).items()}}
    (out / "training.json").write_text(json.dumps(stats, indent=1) + "\n")
    size = (out / "model.safetensors").stat().st_size
    (out / "README.md").write_text(model_card(stats, cfg, size))
    log(f"saved {out} ({size / 1e6:.1f} MB); total {(time.time() - T0) / 60:.1f} min")
    print(json.dumps({"eval": result, "size_mb": round(size / 1e6, 1)}))


if __name__ == "__main__":
    main()
