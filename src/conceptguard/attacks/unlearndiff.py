"""UnlearnDiffAtk (Zhang et al., 2023): adversarial prefix tokens against the defended model.

For each of n prompts that ask for the concept (stripped of what the target's prompt filters
block) and an image of the concept showing what the prompt describes, k prefix tokens are
optimised so that the *defended* model's denoising loss on the noised image latents is minimal:

    min_{prefix}  E_{t, eps} || eps_theta(x_t, c(prefix + prompt), t) - eps ||^2

with eps_theta the target's (possibly edited) UNet. The prefix lives on the relaxed one-hot over
the attack vocabulary (the target's vocabulary, restricted to tokens that survive decoding to
text and back): the gradient of the loss with respect to the relaxation, taken at the current
tokens (straight-through), ranks every single-token swap by its first-order effect, and each
iteration tries one highly ranked swap per prompt and keeps it only if the loss falls. Every loss
the attack sees is the loss of a real text prompt. All n prompts are optimised in one batch on
fixed noise draws (common random numbers, so losses are comparable across iterations).

The adaptive form ("unlearndiff+") also differentiates through the target's embedding
defenses and, against image filters, adds a hinge that pushes the CLIP embedding of the
predicted clean image toward c_a rather than c_u until the filter would pass it
(`ImageFilterTerm`).

The helpers here (`DenoisingObjective`, `ImageFilterTerm`,
`cpu_threads`) are shared with the CCE attack (cce.py).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F

from conceptguard.attacks.base import ATTACKS, Attack, AttackResult, AttackTarget, B, Budget
from conceptguard.defenses.espresso import EspressoFilter, p_unacceptable

# ------------------------------------------------------------------------------ shared helpers

@contextlib.contextmanager
def cpu_threads(target: AttackTarget) -> Iterator[None]:
    """One thread for the mini world's small batches on a CPU: several threads on a shared CPU spin
    against each other (an order of magnitude slower), and one thread gives the same numbers on
    any machine. Larger models and accelerators are left as they are."""
    unet = target.unet
    small = unet.device.type == "cpu" and sum(p.numel() for p in unet.parameters()) < 50_000_000
    previous = torch.get_num_threads()
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def project_to_simplex(x: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row (last axis) onto the probability simplex: what the paper's
    bisection computes (its upper bound of 1 is never active once the row sums to 1)."""
    u = x.sort(-1, descending=True).values
    css = u.cumsum(-1) - 1
    idx = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
    rho = ((u - css / idx) > 0).sum(-1, keepdim=True).clamp(min=1)
    theta = css.gather(-1, rho - 1) / rho.to(x.dtype)
    return (x - theta).clamp(min=0)


class SampleOneHot(torch.autograd.Function):
    """A one-hot token sampled from each row's distribution; the backward pass hands the gradient
    through clipped to [-1, 1] (the paper's straight-through estimator)."""

    @staticmethod
    def forward(ctx, probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        flat = probs.detach().reshape(-1, probs.shape[-1]).clamp(min=0)
        picked = torch.multinomial(flat + 1e-12, 1, generator=gen).squeeze(-1)
        return F.one_hot(picked, probs.shape[-1]).to(probs.dtype).reshape(probs.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return F.hardtanh(grad), None


def attack_vocabulary(target: AttackTarget) -> tuple[torch.Tensor, list[str]]:
    """Token ids of target.vocabulary that decode to a word which tokenizes back to the same single
    id (so an optimised prefix is exactly the text prompt it is printed as), and those words."""
    tok = target.tokenizer
    ids, words = [], []
    for i in target.vocabulary.tolist():
        word = str(tok.decode([i])).strip()
        if word and " " not in word and tok(word, add_special_tokens=False).input_ids == [i]:
            ids.append(i)
            words.append(word)
    return torch.tensor(ids, dtype=torch.long), words


def _size_field(size, key: str) -> int | None:
    """A field of an image processor's size: a dict in older transformers, a SizeDict in 5.x."""
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def clip_image_embeds(embedder, images: torch.Tensor) -> torch.Tensor:
    """Normalised CLIP image embeddings of images in [-1, 1] [B, 3, H, W], differentiably, with
    the preprocessing of the embedder's processor (resize, centre crop, mean / std)."""
    proc = embedder.processor.image_processor
    clip = embedder.clip
    x = (images.float().clamp(-1, 1) + 1) / 2
    size = _size_field(proc.size, "shortest_edge")
    crop = {k: _size_field(proc.crop_size, k) or x.shape[i] for k, i in (("height", -2), ("width", -1))}
    if getattr(proc, "do_resize", True) and size and min(x.shape[-2:]) != size:
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bicubic", align_corners=False,
                          antialias=True)
    if getattr(proc, "do_center_crop", True):
        ch, cw = crop["height"], crop["width"]
        top, left = max((x.shape[-2] - ch) // 2, 0), max((x.shape[-1] - cw) // 2, 0)
        x = x[..., top:top + ch, left:left + cw]
    if getattr(proc, "do_normalize", True):
        mean = torch.tensor(proc.image_mean, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(proc.image_std, dtype=x.dtype, device=x.device)[:, None, None]
        x = (x - mean) / std
    pooled = clip.vision_model(pixel_values=x.to(clip.device, clip.dtype)).pooler_output
    return F.normalize(clip.visual_projection(pooled).float(), dim=-1)


class ImageFilterTerm:
    """Adaptive term against image filters, per predicted clean image: a hinge on the logit of p_u,

        max(0, logit(p_u) - logit(tau) + margin),

    with p_u the filter's decision (softmax over CLIP similarities to c_u and c_a). It is zero once
    the image is `margin` inside the filter's acceptable side, so it never pushes the image further
    toward c_a than passing the filter needs (that would trade the concept away). An Espresso
    filter is attacked with its own embedder, (possibly fine-tuned) concept embeddings, mode and
    tau; any other image filter with the attacker's CLIP, the concept's texts and tau 0.5."""

    margin = 1.0

    def __init__(self, target: AttackTarget) -> None:

        self._p_u = p_unacceptable
        self.parts = []  # (embedder, t_u, t_a, scale, mode, tau)
        name = target.concept.name
        for f in target.image_filters:
            pairs = [c for c in f.concepts if c.name == name] if isinstance(f, EspressoFilter) else []
            if isinstance(f, EspressoFilter) and pairs:
                self.parts.append((f.embedder, pairs[0].t_u, pairs[0].t_a, f.scale, f.mode, f.tau))
            elif not any(p[0] is target.embedder and p[4] == "softmax" for p in self.parts):
                e = target.embedder
                t = e.texts(list(target.concept.filter_texts))
                self.parts.append((e, t[0], t[1], e.logit_scale, "softmax", 0.5))

    def __bool__(self) -> bool:
        return bool(self.parts)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image loss [B] for decoded images in [-1, 1]."""
        total = torch.zeros(())
        for embedder, *part in self.parts:
            total = total + self._hinge(clip_image_embeds(embedder, images), *part)
        return total

    def on_text(self, text_embeds: torch.Tensor) -> torch.Tensor:
        """The same loss [B] with the attacker's CLIP text embedding of a prompt standing in for its
        image's embedding (text-only attacks: PEZ+, Ring-A-Bell+)."""
        total = torch.zeros(())
        for _, *part in self.parts:
            total = total + self._hinge(text_embeds, *part)
        return total

    def _hinge(self, x: torch.Tensor, t_u, t_a, scale, mode, tau) -> torch.Tensor:
        p_u = self._p_u(x, t_u.to(x.device), t_a.to(x.device), scale, mode).clamp(1e-6, 1 - 1e-6)
        logit = torch.log(p_u) - torch.log1p(-p_u)
        return F.relu(logit - math.log(tau / (1 - tau)) + self.margin)


class DenoisingObjective:
    """The defended model's denoising loss on noised latents of concept images.

    `rows` fixed (latent, t, eps) triples; row r belongs to prompt `owner[r]`. With an image
    filter term (adaptive attacks), the predicted clean latent x0 is decoded by the VAE and
    scored by `ImageFilterTerm`, weighted by `clip_weight`.
    """

    def __init__(self, target: AttackTarget, latents: torch.Tensor, t_range: tuple[int, int],
                 clip_weight: float = 0.0, adaptive: bool = False, chunk: int = 32) -> None:
        self.target, self.latents, self.adaptive, self.chunk = target, latents, adaptive, chunk
        sched = target.pipe.scheduler
        self.alphas = sched.alphas_cumprod.to(latents.device, torch.float32)
        self.t_range = (max(0, t_range[0]), min(t_range[1], len(self.alphas)))
        self.filter_term = ImageFilterTerm(target) if adaptive and clip_weight > 0 else None
        self.clip_weight = clip_weight if self.filter_term else 0.0

    def draws(self, which: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noised latents x_t, timesteps t and noise eps for latents[which] (t stratified over the range)."""
        b = len(which)
        lo, hi = self.t_range
        u = (torch.arange(b, dtype=torch.float32) + torch.rand(b, generator=gen))[torch.randperm(b, generator=gen)] / b
        t = (lo + u * (hi - lo)).long().clamp(lo, hi - 1)
        x0 = self.latents[which]
        eps = torch.randn((b, *self.latents.shape[1:]), generator=gen).to(x0.device)  # CPU draws: device-independent
        a = self.alphas[t].view(-1, 1, 1, 1).to(x0.device)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps, t, eps

    def loss(self, ids: torch.Tensor, token_embeds: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
             eps: torch.Tensor) -> torch.Tensor:
        """Per-row loss [B]; differentiable in token_embeds."""
        target = self.target
        cond = target.encode(ids, token_embeds, defended=self.adaptive)
        unet = target.unet
        pred = unet(x_t.to(unet.device, unet.dtype), t.to(unet.device),
                    encoder_hidden_states=cond.to(unet.dtype)).sample.float()
        loss = (pred - eps.to(pred.device)).pow(2).flatten(1).mean(1)
        if self.clip_weight:
            a = self.alphas[t].view(-1, 1, 1, 1).to(pred.device)
            x0 = (x_t.to(pred.device) - (1 - a).sqrt() * pred) / a.sqrt()
            vae = target.pipe.vae
            images = vae.decode((x0 / vae.config.scaling_factor).to(vae.dtype)).sample
            assert self.filter_term is not None  # clip_weight is 0 without one
            loss = loss + self.clip_weight * self.filter_term(images).to(loss.device)
        return loss


def initial_prefixes(target: AttackTarget, words: list[str], images, n: int, k: int, pool: int,
                     gen: torch.Generator) -> torch.Tensor:
    """Start tokens [n, k] (indices into `words`): each prompt draws k distinct tokens from the `pool`
    words whose attacker-CLIP text embedding ("a photo of <word>") is nearest to the mean image
    embedding of the concept images -- words related to what the images show. pool 0: uniformly
    random tokens (the paper's random start)."""
    V = len(words)
    if pool <= 0:
        return torch.randint(0, V, (n, k), generator=gen)
    e = target.embedder
    with torch.no_grad():
        scores = e.texts([f"a photo of {w}" for w in words]) @ F.normalize(e.images(images).mean(0), dim=-1)
    top = scores.topk(min(max(pool, k), V)).indices
    rows = []
    for _ in range(n):
        pick = top[torch.randperm(len(top), generator=gen)[:k]]
        rows.append(torch.cat([pick, pick[torch.randint(0, len(pick), (k - len(pick),), generator=gen)]]))
    return torch.stack(rows).cpu()  # the search state lives on the CPU


# ------------------------------------------------------------------------------------ the attack

class UnlearnDiffBudget(Budget):
    """The paper's procedure by default (`simplex`, its code's `TextGrad`): 5 prefix tokens (3 for
    styles), a distribution over the vocabulary per token, and at each of 50 evenly spaced timesteps
    40 Adam steps (lr 1e-2, weight decay 0.1) on the denoising loss of a token sample (straight-
    through), each followed by a projection onto the simplex; after each timestep the most likely
    tokens are tried on the target, and a prompt stops once the evaluation judge sees the concept
    (a prompt whose original already succeeds is not attacked). `cpu()` is the mini world's
    `swap` search: gradient-ranked token swaps on fixed noise draws, kept when the loss falls."""

    tokens: int = 5  # adversarial prefix length
    procedure: Literal["simplex", "swap"] = "simplex"
    iterations: int = 40  # simplex: Adam steps per timestep; swap: proposed token swaps per prompt
    timesteps: int = 50  # simplex: the evenly spaced timesteps optimised in turn
    lr: float = 1e-2  # simplex
    weight_decay: float = 0.1  # simplex (Adam's coupled L2, as the paper's code)
    candidates: int = 16  # swap: a swap is drawn from the best-ranked this many (position, token) pairs
    draws: int = 1  # swap: fixed (t, eps) draws per prompt
    t_min: int = 0  # swap
    t_max: int = 1000  # swap
    clip_weight: float = 0.01  # adaptive form: weight of the image-filter hinge (per image)
    init_pool: int = 0  # swap: start from tokens drawn from this many CLIP-nearest to the images; 0: any token

    @classmethod
    def cpu(cls) -> UnlearnDiffBudget:
        return cls(tokens=5, procedure="swap", iterations=20, candidates=8, draws=2, t_min=100, t_max=900,
                   init_pool=10)

    def search_size(self) -> tuple[int, str]:
        per_prompt = self.iterations * self.timesteps if self.procedure == "simplex" else self.iterations
        return per_prompt, "steps"


class WhiteBoxAttack(Attack[B]):
    """Base of the attacks that optimise against the defended model's weights (UnlearnDiffAtk, CCE)."""

    target_dependent = True
    whitebox = True  # the plain form reads the (edited) UNet and the text encoder only

    def attack(self, target: AttackTarget, n: int, seed: int) -> AttackResult:
        with cpu_threads(target):
            return self._attack(target, n, seed, torch.Generator().manual_seed(seed))

    def _attack(self, target: AttackTarget, n: int, seed: int, gen: torch.Generator) -> AttackResult:
        """The search itself, on one CPU thread; `gen` is seeded with `seed` (noise draws, timesteps)."""
        raise NotImplementedError


@ATTACKS.register("unlearndiff", adaptive=False)
@ATTACKS.register("unlearndiff+", adaptive=True)
class UnlearnDiffAtk(WhiteBoxAttack[UnlearnDiffBudget]):
    """Prefix tokens found by a gradient-ranked token search on the defended model's denoising loss.

    Each iteration, the gradient of the loss with respect to the relaxed one-hot of the current
    prefix (straight-through: evaluated at the real tokens) gives, for every position and
    vocabulary token, the first-order change of the loss if that token were swapped in. Each
    prompt tries one swap drawn from its `candidates` best-ranked ones; the swap is kept if the
    loss on the prompt's fixed noise draws falls, and otherwise not proposed again. The losses
    every iteration sees are losses of real text prompts, so the kept prefix is never worse than
    the start (`settings["loss_start"]`, `settings["loss_final"]`).
    """

    name = "unlearndiff"
    rewrites_seed_prompts = True
    threat_model = "white box on the defended model: prefix tokens optimised on its denoising loss"

    def _attack(self, target: AttackTarget, n: int, seed: int, gen: torch.Generator) -> AttackResult:
        if self.budget.procedure == "simplex":
            return self._attack_simplex(target, n, seed, gen)
        b = self.budget
        vocab, words = attack_vocabulary(target)
        table = target.text_encoder.get_input_embeddings()
        with torch.no_grad():
            E = table(vocab.to(next(table.parameters()).device)).float()  # [V, d]
        k, V = b.tokens, len(vocab)

        base = [target.strip_blocked(p) for p in target.seed_prompts(n, seed)]
        images = target.paired_concept_images(n, seed)
        objective = DenoisingObjective(target, target.image_latents(images), (b.t_min, b.t_max), b.clip_weight,
                                       self.adaptive)
        owner = torch.arange(n).repeat_interleave(b.draws)
        draw = objective.draws(owner, gen)

        best = initial_prefixes(target, words, images, n, k, b.init_pool, gen)
        ids = target.tokenize([" ".join(words[j] for j in row) + (" " + p if p else "")
                               for row, p in zip(best.tolist(), base)])
        best_loss, grad = self._evaluate(target, objective, ids, best, vocab, E, owner, draw, need_grad=b.iterations > 0)
        history = [float(best_loss.mean())]
        tried = torch.zeros(n, k, V, dtype=torch.bool)
        rows = torch.arange(n)
        for it in range(1, b.iterations + 1):
            # first-order change of the loss for swapping token v in at position i
            delta = grad - grad.gather(-1, best[..., None])
            delta[tried | F.one_hot(best, V).bool()] = math.inf
            top = delta.flatten(1).topk(min(b.candidates, k * V), largest=False).indices  # [n, c]
            choice = top[rows, torch.randint(0, top.shape[1], (n,), generator=gen)]
            pos, tok = choice // V, choice % V
            proposal = best.clone()
            proposal[rows, pos] = tok
            loss, g = self._evaluate(target, objective, ids, proposal, vocab, E, owner, draw,
                                     need_grad=it < b.iterations)
            keep = loss < best_loss
            tried[rows, pos, tok] = True
            best[keep], best_loss[keep] = proposal[keep], loss[keep]
            if g is not None:
                grad[keep] = g[keep]
            tried[keep] = False  # a new point: every swap may be worth trying again
            history.append(float(best_loss.mean()))
            target.report(self.label, it, b.iterations)

        prompts = []
        for row, p in zip(best.tolist(), base):
            prefix = " ".join(words[j] for j in row)
            prompts.append(target.strip_blocked(f"{prefix} {p}".strip()))
        settings = {"loss_start": history[0], "loss_final": history[-1], "losses": history,
                    "adaptive": self.adaptive, "vocabulary": V}
        return self.result(target, prompts, iterations=b.iterations, settings=settings)

    def _attack_simplex(self, target: AttackTarget, n: int, seed: int, gen: torch.Generator) -> AttackResult:
        """The paper's procedure (see UnlearnDiffBudget), all n prompts optimised together."""
        b = self.budget
        vocab, words = attack_vocabulary(target)
        table = target.text_encoder.get_input_embeddings()
        with torch.no_grad():
            E = table(vocab.to(next(table.parameters()).device)).float()  # [V, d]
        k, V = b.tokens, len(vocab)
        originals = target.seed_prompts(n, seed)
        base = [target.strip_blocked(p) for p in originals]
        latents = target.image_latents(target.paired_concept_images(n, seed))
        objective = DenoisingObjective(target, latents, (0, 1000), b.clip_weight, self.adaptive)
        eval_seeds = [seed * 1_000_003 + i for i in range(n)]

        start_queries = target.queries
        # the paper first tries the original prompt: one that already succeeds is not attacked
        done = torch.tensor(target.succeeds(originals, eval_seeds), dtype=torch.bool)
        found = [p if ok else None for p, ok in zip(originals, done.tolist())]
        ids = target.tokenize([" ".join(words[:1] * k) + (" " + p if p else "") for p in base])
        base_embeds = target.token_embeddings(ids).detach().float()
        w = torch.full((n, k, V), 1.0 / V, requires_grad=True)
        opt = torch.optim.Adam([w], lr=b.lr, weight_decay=b.weight_decay)
        T = len(objective.alphas)
        step = max(1, T // max(1, b.timesteps))
        timesteps = list(range(step // 2, T, step))[:b.timesteps]
        losses: list[float] = []
        tokens = w.detach().argmax(-1)
        for done_t, t in enumerate(timesteps, 1):
            if bool(done.all()):
                break
            active = (~done).float()
            total = 0.0
            for _ in range(b.iterations):
                onehot = SampleOneHot.apply(w, gen)  # [n, k, V]
                embeds = torch.cat([base_embeds[:, :1], (onehot.to(E.device) @ E), base_embeds[:, k + 1:]], 1)
                x0 = objective.latents
                eps = torch.randn(x0.shape, generator=gen).to(x0.device)
                a = objective.alphas[t].to(x0.device)
                x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
                loss = objective.loss(ids, embeds, x_t, torch.full((n,), t), eps)
                w.grad, = torch.autograd.grad((loss.cpu() * active).sum(), w)  # the model's weights get none
                opt.step()
                with torch.no_grad():
                    w.copy_(project_to_simplex(w))
                total += float((loss.detach().cpu() * active).sum() / active.sum())
            losses.append(total / max(1, b.iterations))
            tokens = w.detach().argmax(-1)
            prompts = self._prefixed(target, words, tokens, base)
            todo = [i for i in range(n) if not done[i]]
            for i, ok in zip(todo, target.succeeds([prompts[i] for i in todo], [eval_seeds[i] for i in todo])):
                if ok:
                    done[i], found[i] = True, prompts[i]
            target.report(self.label, done_t, len(timesteps))
        final = self._prefixed(target, words, tokens, base)
        prompts = [f if f is not None else p for f, p in zip(found, final)]
        settings = {"procedure": "simplex", "losses": losses, "timesteps_run": len(losses),
                    "succeeded": [bool(d) for d in done], "judge_in_loop": target.judge is not None,
                    "adaptive": self.adaptive, "vocabulary": V}
        return self.result(target, prompts, iterations=len(losses) * b.iterations,
                           queries=target.queries - start_queries, settings=settings)

    @staticmethod
    def _prefixed(target: AttackTarget, words: list[str], tokens: torch.Tensor, base: list[str]) -> list[str]:
        return [target.strip_blocked(f"{' '.join(words[j] for j in row)} {p}".strip())
                for row, p in zip(tokens.tolist(), base)]

    @staticmethod
    def _evaluate(target, objective, ids, tokens, vocab, E, owner, draw, need_grad):
        """Loss per prompt (mean over its draws) of the prefixes `tokens` [n, k], and the gradient of
        the summed loss with respect to their relaxed one-hot [n, k, V] (straight-through: the
        forward pass uses the tokens themselves). Rows are processed in chunks."""
        n, k = tokens.shape
        ids = ids.clone()
        ids[:, 1:k + 1] = vocab[tokens]
        ids = ids[owner]
        onehot = F.one_hot(tokens, len(vocab)).to(E.device, E.dtype)[owner.to(E.device)]
        base = target.token_embeddings(ids).detach().float()
        x_t, t, eps = draw
        losses, grads = [], []
        for lo in range(0, len(owner), objective.chunk):
            sl = slice(lo, lo + objective.chunk)
            with torch.set_grad_enabled(need_grad):
                w = onehot[sl].clone().requires_grad_(need_grad)
                embeds = torch.cat([base[sl, :1], w @ E, base[sl, k + 1:]], 1)
                loss = objective.loss(ids[sl], embeds, x_t[sl], t[sl], eps[sl])
                if need_grad:
                    grads.append(torch.autograd.grad(loss.sum(), w)[0].cpu())  # the search state lives on the CPU
            losses.append(loss.detach().cpu())
        per_prompt = torch.zeros(n).index_add_(0, owner, torch.cat(losses)) / torch.bincount(owner, minlength=n)
        grad = torch.zeros(n, k, len(vocab)).index_add_(0, owner, torch.cat(grads)) if need_grad else None
        return per_prompt, grad
