"""Distil a small draft model from the bundled target, SmolLM2-135M-Instruct (same tokenizer).

    .venv/bin/python train/distill_draft.py --minutes 38

Phases, each with a share of the wall-clock budget (`--minutes`, all included):
1. data: the target (bf16, batched greedy generate with KV cache) answers thousands of prompts made
   from templates (train/prompts.py); its top-k logits at every answer position are recorded while it
   generates. Then text that ships on disk (Python stdlib docstrings, pydoc topics, package metadata)
   is put in the assistant turn of a chat and the target's top-k logits on it are taken in one pass.
2. train: a Llama draft (tied embedding initialised from an SVD projection of the target's) learns
   the target's top-k distribution (soft cross-entropy) plus its greedy token (hard cross-entropy),
   with the softmax over a trimmed vocabulary (the tokens the target predicts most, plus random
   negatives each step), in bf16 autocast.
3. eval: the fp32 target answers the held-out calibration prompts greedily (their first user turn,
   never used in training); agreement = share of answer positions where the draft's argmax (full
   vocabulary, fp32, weights as saved) equals the target's greedy token. Also measures the cost of
   one decode step of each (batch 1, KV cache, fp32, median).
4. save: the draft in bf16 safetensors with config.json and a model card (README.md) in --out
   (default ./distilled-draft). The committed draft (specmemo_plan/drafts/smollm2-135m-draft) is
   replaced only with --out pointing there and --force: that is checked before phase 1, not after it.

Progress goes to stderr. Intermediate data goes to --work (default /tmp/specmemo-distill).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prompts import make_prompts  # noqa: E402

TARGET = "bundled:smollm2-135m-instruct"
DEFAULT_OUT = "distilled-draft"  # beside where it runs: never the committed draft by default
HELD_OUT = ROOT / "specmemo_plan" / "data" / "calibration_prompts.json"
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{(time.time() - T0) / 60:5.1f} min] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- data


def disk_texts(limit_chars: int = 6_000_000) -> list[str]:
    """Paragraphs of English text that ship with Python and the installed packages."""
    import sysconfig

    paras: list[str] = []

    def add(text: str) -> None:
        for block in text.replace("\r", "").split("\n\n"):
            block = " ".join(block.split())
            if 200 <= len(block) <= 2000 and sum(c.isalpha() for c in block) > 0.6 * len(block):
                paras.append(block)

    try:
        from pydoc_data.topics import topics

        for v in topics.values():
            add(v)
    except Exception:  # pragma: no cover - optional source
        pass
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")):
        if "test" in path.parts[-2:][0] or path.name.startswith("test"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    add(doc)
    for site in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for meta in sorted(Path(site).glob("*.dist-info/METADATA")) + sorted(Path(site).glob("*.dist-info/LICENSE*")):
            try:
                add(meta.read_text(encoding="utf-8", errors="ignore"))
            except OSError:
                pass
    random.Random(0).shuffle(paras)
    out, total = [], 0
    for p in dict.fromkeys(paras):
        out.append(p)
        total += len(p)
        if total > limit_chars:
            break
    return out


def chat_ids(tok, user: str) -> list[int]:
    enc = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=True)
    if isinstance(enc, dict) or hasattr(enc, "keys"):
        enc = enc["input_ids"]
    return list(enc)


class TopK:
    """A logits processor that records the target's top-k logits at each generation step."""

    def __init__(self, k: int):
        self.k, self.vals, self.idx = k, [], []

    def __call__(self, input_ids, scores):
        v, i = scores.float().topk(self.k, dim=-1)
        self.vals.append(v.half())
        self.idx.append(i.int())
        return scores


def left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, n - len(s):] = torch.tensor(s)
        mask[r, n - len(s):] = 1
    return ids, mask


def generate_answers(model, tok, prompts: list[str], deadline: float, args, eos: set[int]) -> list[dict]:
    """Greedy answers of the target with its top-k logits, until the deadline."""
    from transformers import LogitsProcessorList

    encoded = [chat_ids(tok, p) for p in prompts]
    encoded = [e for e in encoded if len(e) <= args.max_prompt]
    bs = args.gen_batch
    # Chunks of similar prompt length waste less padding; chunk order stays random.
    chunks = []
    for start in range(0, len(encoded), bs * 8):
        group = sorted(encoded[start:start + bs * 8], key=len)
        chunks += [group[i:i + bs] for i in range(0, len(group), bs)]
    samples, n_tok, t_start = [], 0, time.time()
    for b, batch in enumerate(chunks):
        if time.time() > deadline:
            break
        ids, mask = left_pad(batch, tok.pad_token_id)
        rec = TopK(args.topk)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_new, do_sample=False,
                                 logits_processor=LogitsProcessorList([rec]), pad_token_id=tok.pad_token_id)
        new = out[:, ids.shape[1]:]
        vals, idx = torch.stack(rec.vals, 1), torch.stack(rec.idx, 1)
        for r, prompt in enumerate(batch):
            ans = new[r].tolist()
            n = len(ans)
            for j, t in enumerate(ans):
                if t in eos:
                    n = j + 1
                    break
            if n == 0:
                continue
            samples.append({"ids": torch.tensor(prompt + ans[:n], dtype=torch.int32), "pos0": len(prompt) - 1,
                            "v": vals[r, :n].clone(), "i": idx[r, :n].clone(), "src": 0})
            n_tok += n
        if b % 5 == 0:
            rate = n_tok / (time.time() - t_start)
            log(f"gen batch {b + 1}/{len(chunks)}: {len(samples)} answers, {n_tok} tokens ({rate:.0f} tok/s)")
    log(f"generation done: {len(samples)} answers, {n_tok} answer tokens")
    return samples


TEXT_ASKS = ["Tell me more.", "Can you explain this topic?", "Write a short explanation.", "Describe it in detail.",
             "What does the documentation say?", "Explain how this works.", "Give me an overview.", "Continue."]


def text_targets(model, tok, texts: list[str], deadline: float, args) -> list[dict]:
    """The target's top-k logits on on-disk text placed in the assistant turn of a chat."""
    r = random.Random(args.seed + 1)
    samples, n_tok, t_start = [], 0, time.time()
    items = []
    for text in texts:
        prompt = chat_ids(tok, r.choice(TEXT_ASKS))
        body = tok(text, add_special_tokens=False)["input_ids"][: args.text_tokens]
        if len(body) >= 16:
            items.append((prompt, body))
    bs = args.text_batch
    for b in range(0, len(items), bs):
        if time.time() > deadline:
            break
        batch = [p + t for p, t in items[b:b + bs]]
        n = max(len(s) for s in batch)
        ids = torch.full((len(batch), n), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for k, s in enumerate(batch):
            ids[k, : len(s)] = torch.tensor(s)
            mask[k, : len(s)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
            v, i = logits.float().topk(args.topk, dim=-1)
        for k, (p, t) in enumerate(items[b:b + bs]):
            pos0, L = len(p) - 1, len(p) + len(t)
            # positions pos0 .. L-2 predict the text tokens
            samples.append({"ids": torch.tensor(p + t, dtype=torch.int32), "pos0": pos0,
                            "v": v[k, pos0:L - 1].half().clone(), "i": i[k, pos0:L - 1].int().clone(), "src": 1})
            n_tok += L - 1 - pos0
        if (b // bs) % 10 == 0:
            log(f"text batch {b // bs + 1}: {len(samples)} passages, {n_tok} tokens ({n_tok / (time.time() - t_start):.0f} tok/s)")
    log(f"text done: {len(samples)} passages, {n_tok} tokens")
    return samples


# ---------------------------------------------------------------------------------------- model


def make_draft(target, args):
    from transformers import LlamaConfig, LlamaForCausalLM

    tc = target.config
    cfg = LlamaConfig(
        vocab_size=tc.vocab_size, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads, hidden_act="silu", max_position_embeddings=tc.max_position_embeddings,
        rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=100000.0,
        bos_token_id=tc.bos_token_id, eos_token_id=tc.eos_token_id, pad_token_id=tc.pad_token_id,
        attention_bias=False, mlp_bias=False,
    )
    cfg.rope_parameters = {"rope_theta": 100000.0, "rope_type": "default"}
    torch.manual_seed(args.seed)
    draft = LlamaForCausalLM(cfg)
    # Tied embedding: the target's embedding projected on its top principal directions.
    E = target.get_input_embeddings().weight.detach().float()
    cov = E.t() @ E
    _, vecs = torch.linalg.eigh(cov)
    P = vecs[:, -args.hidden:].flip(-1)  # 576 x hidden, top directions first
    emb = E @ P
    if args.emb_scale > 0:
        emb *= args.emb_scale / emb.pow(2).mean().sqrt()
    with torch.no_grad():
        draft.model.embed_tokens.weight.copy_(emb)
    draft.tie_weights()
    return draft


def batches(samples: list[dict], budget: int, rng: random.Random):
    """Endless length-bucketed batches of about `budget` tokens."""
    while True:
        order = list(range(len(samples)))
        rng.shuffle(order)
        out = []
        for s in range(0, len(order), 512):
            group = sorted(order[s:s + 512], key=lambda j: len(samples[j]["ids"]))
            cur: list[int] = []
            for j in group:
                L = len(samples[j]["ids"])
                if cur and (len(cur) + 1) * max(L, len(samples[cur[-1]]["ids"])) > budget:
                    out.append(cur)
                    cur = []
                cur.append(j)
            if cur:
                out.append(cur)
        rng.shuffle(out)
        yield from out


def collate(samples, idx, pad, vmap):
    items = [samples[j] for j in idx]
    T = max(len(it["ids"]) for it in items)
    ids = torch.full((len(items), T), pad, dtype=torch.long)
    mask = torch.zeros((len(items), T), dtype=torch.long)
    rows, cols, tv, ti = [], [], [], []
    for r, it in enumerate(items):
        L = len(it["ids"])
        ids[r, :L] = it["ids"].long()
        mask[r, :L] = 1
        n = it["v"].shape[0]
        rows.append(torch.full((n,), r, dtype=torch.long))
        cols.append(torch.arange(it["pos0"], it["pos0"] + n))
        tv.append(it["v"].float())
        ti.append(it["i"].long())
    tv, ti = torch.cat(tv), torch.cat(ti)
    return ids, mask, torch.cat(rows), torch.cat(cols), tv, vmap[ti]


class SplitEmbedding:
    """The tied embedding held as two parameters during training: the kept vocabulary (rows the
    softmax is computed over) and the rest. Avoids slow indexed-gather backward passes on CPU."""

    def __init__(self, weight: torch.Tensor, vocab: torch.Tensor):
        self.vocab = vocab
        rest = torch.ones(weight.shape[0], dtype=torch.bool)
        rest[vocab] = False
        self.rest = rest.nonzero().flatten()
        self.order = torch.cat([vocab, self.rest])  # new row -> token id
        self.pos = torch.empty_like(self.order)
        self.pos[self.order] = torch.arange(len(self.order))  # token id -> new row
        self.kept = torch.nn.Parameter(weight.detach()[vocab].clone())
        self.other = torch.nn.Parameter(weight.detach()[self.rest].clone())

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(self.pos[ids], torch.cat([self.kept, self.other]))

    def write_back(self, weight: torch.Tensor) -> None:
        with torch.no_grad():
            weight[self.vocab] = self.kept.detach()
            weight[self.rest] = self.other.detach()


def distill_loss(draft, emb: SplitEmbedding, ids, rows, cols, tv, tmap, args, rng_gen, want_acc=False):
    # Right padding under a causal mask: real tokens never see pads, so no attention mask is needed.
    h = draft.model(inputs_embeds=emb.embed(ids)).last_hidden_state[rows, cols]  # N x H
    K = emb.kept.shape[0]
    if args.negatives and emb.other.shape[0] > args.negatives:
        off = int(torch.randint(0, emb.other.shape[0] - args.negatives, (1,), generator=rng_gen))
        cand = torch.cat([emb.kept, emb.other[off:off + args.negatives]])
    else:
        cand = emb.kept
    logits = (h @ cand.t()).float()
    logp = logits.log_softmax(-1)
    valid = tmap >= 0  # teacher's top-k tokens inside the kept vocabulary
    p = (tv / args.temperature).softmax(-1) * valid
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-9)
    lp = logp.gather(1, tmap.clamp_min(0))
    soft = -(p * lp).sum(-1)
    hard = -lp[:, 0]
    keep = valid[:, 0]
    loss = (soft + args.hard_weight * hard)[keep].mean()
    acc = None
    if want_acc:
        with torch.no_grad():
            acc = (logits[:, :K].argmax(-1) == tmap[:, 0])[keep].float().mean().item()
    return loss, acc


# ----------------------------------------------------------------------------------------- eval


def held_out_prompts() -> list[dict]:
    data = json.loads(HELD_OUT.read_text())
    return [{"id": p["id"], "category": p["category"], "text": p["turns"][0]} for p in data["prompts"]]


def target_references(target32, tok, args) -> list[dict]:
    """The fp32 target's greedy answers to the held-out prompts (cached in --work)."""
    cache = Path(args.work) / f"heldout_refs_{args.eval_tokens}.pt"
    if cache.is_file():
        return torch.load(cache)
    refs = []
    prompts = held_out_prompts()
    eos = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
    encoded = [(p, chat_ids(tok, p["text"])) for p in prompts]
    encoded.sort(key=lambda x: len(x[1]))
    for b in range(0, len(encoded), 32):
        chunk = encoded[b:b + 32]
        ids, mask = left_pad([e for _, e in chunk], tok.pad_token_id)
        with torch.no_grad():
            out = target32.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.eval_tokens,
                                    do_sample=False, pad_token_id=tok.pad_token_id)
        for r, (p, e) in enumerate(chunk):
            ans = out[r, ids.shape[1]:].tolist()
            n = next((j + 1 for j, t in enumerate(ans) if t in eos), len(ans))
            refs.append({**p, "prompt": e, "answer": ans[:n]})
        log(f"held-out references {len(refs)}/{len(encoded)}")
    torch.save(refs, cache)
    return refs


def agreement(draft, refs, vocab=None) -> tuple[float, dict, float]:
    """Token-weighted share of answer positions where the draft's argmax is the target's greedy token."""
    hits, total, per = 0, 0, {}
    first_hits = 0
    with torch.no_grad():
        for ref in refs:
            seq = torch.tensor([ref["prompt"] + ref["answer"]])
            logits = draft(input_ids=seq).logits[0, len(ref["prompt"]) - 1: -1]
            if vocab is not None:
                pred = vocab[logits[:, vocab].argmax(-1)]
            else:
                pred = logits.argmax(-1)
            ok = (pred == torch.tensor(ref["answer"])).tolist()
            hits += sum(ok)
            total += len(ok)
            c = per.setdefault(ref["category"], [0, 0])
            c[0] += sum(ok)
            c[1] += len(ok)
            first_hits += ok[0]
    return hits / total, {k: v[0] / v[1] for k, v in sorted(per.items())}, total


def decode_step_ms(model, repeats: int = 60, prefix: int = 64) -> float:
    """Median wall time of one decode step at batch 1 with a KV cache (after a `prefix`-token prefill)."""
    torch.manual_seed(0)
    ids = torch.randint(100, 40000, (1, prefix))
    times = []
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(repeats):
            t = time.perf_counter()
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            times.append(time.perf_counter() - t)
            cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return statistics.median(times[5:]) * 1000


# ----------------------------------------------------------------------------------------- main


def package_folders() -> list[Path]:
    """Where specmemo_plan lives: this checkout's folder, and the imported package (an installed copy)."""
    folders = [ROOT / "specmemo_plan"]
    try:
        import specmemo_plan

        folders.append(Path(specmemo_plan.__file__).resolve().parent)
    except ImportError:
        pass
    return [f.resolve() for f in folders]


def check_out(out: str, force: bool) -> Path:
    """The --out folder, refused before any work (SystemExit, one line) when it lies inside the package
    (where the committed draft is) without --force, is not a folder, or cannot be created or written."""
    path = Path(out).expanduser().resolve()
    inside = [f for f in package_folders() if path == f or f in path.parents]
    if inside and not force:
        raise SystemExit(f"error: --out {out} is inside the package ({inside[0]}): it would overwrite the committed "
                         "draft (give another folder, or add --force to replace it)")
    if path.exists() and not path.is_dir():
        raise SystemExit(f"error: --out {out} is a file, not a folder")
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SystemExit(f"error: --out {out}: cannot write into {existing}")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=38.0, help="wall-clock budget for everything")
    ap.add_argument("--out", default=DEFAULT_OUT,
                    help=f"folder to save the draft in (default ./{DEFAULT_OUT}; inside the package only with --force)")
    ap.add_argument("--force", action="store_true", help="allow --out inside the package (replace the committed draft)")
    ap.add_argument("--work", default="/tmp/specmemo-distill", help="intermediate data (not committed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse-data", action="store_true", help="reuse data.pt from --work instead of generating")
    # budget shares (fractions of --minutes, measured from the start)
    ap.add_argument("--gen-until", type=float, default=0.50, help="answer generation ends at this share")
    ap.add_argument("--text-until", type=float, default=0.57, help="on-disk text scoring ends at this share")
    ap.add_argument("--eval-reserve", type=float, default=4.5, help="minutes kept for eval, timing and saving")
    # data
    ap.add_argument("--prompts", type=int, default=30000)
    ap.add_argument("--gen-batch", type=int, default=128)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--max-prompt", type=int, default=200)
    ap.add_argument("--text-batch", type=int, default=16)
    ap.add_argument("--text-tokens", type=int, default=192)
    ap.add_argument("--topk", type=int, default=16)
    # model
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--emb-scale", type=float, default=0.06, help="rms of the initial embedding (0: the target's)")
    # training
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--emb-lr", type=float, default=1e-3)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--vocab-keep", type=int, default=12288)
    ap.add_argument("--negatives", type=int, default=1024)
    ap.add_argument("--hard-weight", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--text-share", type=float, default=0.25, help="share of training batches from on-disk text")
    ap.add_argument("--eval-tokens", type=int, default=128)
    args = ap.parse_args()
    out = check_out(args.out, args.force)

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    end = T0 + args.minutes * 60
    from engine.loading import load_model, load_tokenizer

    tok = load_tokenizer(TARGET)
    tok.padding_side = "left"
    eos = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
    data_file = work / "data.pt"
    held = {p["text"] for p in held_out_prompts()}

    # ---- 1. data
    if args.reuse_data and data_file.is_file():
        data = torch.load(data_file)
        log(f"reusing {data_file}: {len(data['gen'])} answers, {len(data['text'])} passages")
    else:
        target = load_model(TARGET, dtype="bf16").model
        log("target loaded (bf16)")
        texts = disk_texts()
        log(f"{len(texts)} paragraphs of on-disk text")
        prompts = [p for p in make_prompts(args.prompts, args.seed, texts) if p not in held]
        log(f"{len(prompts)} generated prompts; answering until {args.gen_until:.0%} of the budget")
        gen = generate_answers(target, tok, prompts, T0 + args.gen_until * args.minutes * 60, args, eos)
        text = text_targets(target, tok, texts[len(texts) // 2:], T0 + args.text_until * args.minutes * 60, args)
        data = {"gen": gen, "text": text, "n_prompts": len(prompts)}
        torch.save(data, data_file)
        del target
    gen, text = data["gen"], data["text"]
    n_gen_tok = sum(s["v"].shape[0] for s in gen)
    n_text_tok = sum(s["v"].shape[0] for s in text)

    # ---- 2. train
    counts = torch.zeros(49152, dtype=torch.float64)
    for s in gen + text:
        p = s["v"].float().softmax(-1)
        counts.index_add_(0, s["i"].flatten().long(), p.flatten().double())
    vocab = counts.argsort(descending=True)[: args.vocab_keep]
    vocab = torch.unique(torch.cat([vocab, torch.tensor(sorted(eos))]))
    vmap = torch.full((49152,), -1, dtype=torch.long)
    vmap[vocab] = torch.arange(len(vocab))
    coverage = counts[vocab].sum() / counts.sum()
    log(f"kept vocabulary {len(vocab)} tokens, {coverage:.4f} of the target's top-k mass")

    target32 = load_model(TARGET, dtype="fp32").model
    draft = make_draft(target32, args)
    n_params = sum(p.numel() for p in draft.parameters())
    log(f"draft: hidden {args.hidden}, {args.layers} layers, {n_params / 1e6:.2f}M parameters")
    emb = SplitEmbedding(draft.model.embed_tokens.weight, vocab)
    emb_params = [emb.kept, emb.other]
    body = [p for n, p in draft.named_parameters() if "embed_tokens" not in n]
    opt = torch.optim.AdamW([{"params": body, "lr": args.lr, "weight_decay": 0.01},
                             {"params": emb_params, "lr": args.emb_lr, "weight_decay": 0.0}], betas=(0.9, 0.98))
    base_lrs = [g["lr"] for g in opt.param_groups]
    rng = random.Random(args.seed)
    rng_gen = torch.Generator().manual_seed(args.seed)
    gen_batches = batches(gen, args.batch_tokens, random.Random(args.seed + 2))
    text_batches = batches(text, args.batch_tokens, random.Random(args.seed + 3)) if text else None
    train_end = end - args.eval_reserve * 60
    t_train = time.time()
    span = max(train_end - t_train, 1.0)
    log(f"training for {span / 60:.1f} min on {n_gen_tok} answer + {n_text_tok} text tokens")
    draft.train()
    step, ema, ema_acc, seen = 0, None, None, 0
    while time.time() < train_end:
        frac = (time.time() - t_train) / span
        warm = min(1.0, (step + 1) / 50)
        scale = warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * scale
        src = text_batches if (text_batches and rng.random() < args.text_share) else gen_batches
        pool = text if src is text_batches else gen
        ids, _, rows, cols, tv, tmap = collate(pool, next(src), tok.pad_token_id, vmap)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, acc = distill_loss(draft, emb, ids, rows, cols, tv, tmap, args, rng_gen, want_acc=step % 5 == 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(body + emb_params, 1.0)
        opt.step()
        step += 1
        seen += len(rows)
        if pool is gen:
            ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
            if acc is not None:
                ema_acc = acc if ema_acc is None else 0.8 * ema_acc + 0.2 * acc
        if step % 25 == 0:
            log(f"step {step}: loss {ema:.3f} (answers, ema), top-1 agreement {ema_acc or 0:.3f}, "
                f"lr x{scale:.2f}, {seen / (time.time() - t_train):.0f} tok/s")
    train_minutes = (time.time() - t_train) / 60
    log(f"trained {step} steps, {seen} token positions, {train_minutes:.1f} min; final loss {ema:.3f}")

    # ---- 3. eval (on the weights as saved: bf16 rounded, run in fp32)
    emb.write_back(draft.model.embed_tokens.weight)
    draft.eval()
    draft = draft.to(torch.bfloat16).to(torch.float32)
    draft.tie_weights()
    refs = target_references(target32, tok, args)
    agree, per_cat, n_pos = agreement(draft, refs)
    agree_kept, _, _ = agreement(draft, refs, vocab)
    log(f"held-out agreement {agree:.3f} over {n_pos} positions (kept-vocab argmax {agree_kept:.3f}); {per_cat}")
    t_ms, d_ms = [], []
    for _ in range(3):  # interleaved, to share any slowdown from other processes
        t_ms.append(decode_step_ms(target32))
        d_ms.append(decode_step_ms(draft))
    t_ms, d_ms = statistics.median(t_ms), statistics.median(d_ms)
    log(f"decode step: target {t_ms:.2f} ms, draft {d_ms:.2f} ms, ratio {d_ms / t_ms:.3f}")

    # ---- 4. save
    out.mkdir(parents=True, exist_ok=True)
    draft.to(torch.bfloat16).save_pretrained(out)
    gc = out / "generation_config.json"
    if gc.exists():
        gc.unlink()
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    stats = {
        "architecture": {"model_type": "llama", "hidden_size": args.hidden, "num_hidden_layers": args.layers,
                         "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads,
                         "intermediate_size": args.intermediate, "vocab_size": 49152, "tie_word_embeddings": True,
                         "parameters": n_params},
        "data": {"prompts_available": data.get("n_prompts"), "answers": len(gen), "answer_tokens": n_gen_tok,
                 "text_passages": len(text), "text_tokens": n_text_tok, "topk": args.topk},
        "training": {"steps": step, "token_positions": seen, "minutes": round(train_minutes, 1),
                     "final_loss": round(ema, 4), "kept_vocab": len(vocab), "kept_vocab_mass": round(float(coverage), 4),
                     "total_minutes": round((time.time() - T0) / 60, 1), "args": {k: v for k, v in vars(args).items() if not k.startswith("_")}},
        "eval": {"heldout_agreement": round(agree, 4), "heldout_positions": n_pos, "per_category": {k: round(v, 4) for k, v in per_cat.items()},
                 "target_decode_ms": round(t_ms, 2), "draft_decode_ms": round(d_ms, 2), "cost_ratio": round(d_ms / t_ms, 4)},
    }
    (work / "stats.json").write_text(json.dumps(stats, indent=1))
    (out / "README.md").write_text(model_card(stats, size))
    log(f"saved {out} ({size / 1e6:.1f} MB); total {(time.time() - T0) / 60:.1f} min")
    print(json.dumps(stats["eval"]))


def model_card(s: dict, size: int) -> str:
    a, d, t, e = s["architecture"], s["data"], s["training"], s["eval"]
    cats = ", ".join(f"{k} {v:.2f}" for k, v in e["per_category"].items())
    return f"""# smollm2-135m-draft

A small draft model for speculative decoding with the bundled target **SmolLM2-135M-Instruct**
(`bundled:smollm2-135m-instruct`). It has **no tokenizer of its own: use the target's** (same
49,152-token vocabulary, same ids). Made by `train/distill_draft.py` in this repository; load it with
`transformers.AutoModelForCausalLM.from_pretrained(<this folder>)` or the engine's
`load_model("bundled:smollm2-135m-draft")`.

## Architecture

`LlamaForCausalLM`: hidden {a['hidden_size']}, {a['num_hidden_layers']} layers, {a['num_attention_heads']} attention heads
({a['num_key_value_heads']} key/value heads, head dim {a['hidden_size'] // a['num_attention_heads']}), SiLU MLP {a['intermediate_size']}, RoPE theta 100000,
vocabulary {a['vocab_size']} with the output layer tied to the embedding; {a['parameters'] / 1e6:.2f}M parameters,
stored in bf16 ({size / 1e6:.1f} MB on disk). The embedding was initialised from the target's embedding
projected on its top {a['hidden_size']} principal directions; the blocks from scratch.

## Data (generated by the script; nothing downloaded)

- {d['answers']} greedy answers ({d['answer_tokens']} tokens, up to {s['training']['args']['max_new']} each) of the target (bf16, batched
  generate with KV cache) to prompts made from templates over eight kinds of request and ~180 topics
  (`train/prompts.py`), with the target's top-{d['topk']} logits recorded at every answer position;
- {d['text_passages']} passages ({d['text_tokens']} tokens) of text shipped on disk (Python stdlib docstrings,
  pydoc topics, package metadata), placed in the assistant turn of a chat and scored by the target
  (top-{d['topk']} logits).

The held-out calibration prompts (`specmemo_plan/data/calibration_prompts.json`) were not used
for training or tuning.

## Training

{t['steps']} AdamW steps ({t['token_positions']} token positions, {t['minutes']} min on 2 CPU cores in bf16
autocast; the whole script, data generation and evaluation included, took {t['total_minutes']} min).
Loss: cross-entropy against the target's top-{d['topk']} distribution plus {t['args']['hard_weight']} x cross-entropy
on its greedy token, with the softmax over the {t['kept_vocab']} tokens the target predicts most
({t['kept_vocab_mass']:.1%} of its top-k probability mass) plus {t['args']['negatives']} random other tokens per step.
Final loss (moving average on answer batches): **{t['final_loss']:.3f}**.

## Evaluation

- **Greedy agreement with the target on held-out prompts: {e['heldout_agreement']:.3f}** - the share of
  {e['heldout_positions']} answer positions (first user turn of each of the 96 calibration prompts, through
  the chat template; the fp32 target's greedy answer, up to {s['training']['args']['eval_tokens']} tokens) where the
  draft's argmax over the full vocabulary, teacher-forced on the target's text, equals the target's
  token. Per category: {cats}.
- **Cost of one decode step: {e['cost_ratio']:.1%} of the target's** ({e['draft_decode_ms']:.2f} ms vs
  {e['target_decode_ms']:.2f} ms; batch 1, KV cache after a 64-token prefix, fp32 both, median of 55
  steps, median of 3 interleaved rounds, 2 CPU threads).

Reproduce: `.venv/bin/python train/distill_draft.py --minutes {t['args']['minutes']:g} --seed {t['args']['seed']}`.
"""


if __name__ == "__main__":
    main()
