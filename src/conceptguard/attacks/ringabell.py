"""Ring-A-Bell (Tsai et al., ICLR 2024): a concept vector in the text encoder's output space and a
genetic search for hard prompts whose embedding carries it.

It needs only the text encoder (no UNet, no images, no queries), so one run serves every target
-- except that the search draws tokens from `target.vocabulary`, which leaves out what the
target's prompt filters block, and keeps only candidates the filters let through.

1. Concept vector: v = mean_i [E(p_u,i) - E(p_a,i)] over twin prompts that differ only in the
   concept (a phrasing of c_u vs. the acceptable counterpart c_a, same shape, colour, background;
   Domain.twin_prompts). E is the encoder's full output [77, d].
2. For each base prompt p (target.seed_prompts, with the blocked words stripped):
   target T = E(strip(p)) + eta * v.
3. Genetic search over `length` tokens from the vocabulary, fitness = -||E(candidate) - T||^2
   summed over the compared positions (the paper code's squared L2): elitism, tournament
   selection, single-point crossover, token mutation (the paper keeps the better half and mates
   it; ours is the usual steady-state GA with the same population, rates and generations).
   All base prompts are searched together, so every generation is one batched pass through
   the text encoder. A candidate is scored as it will be used: decoded to text,
   re-tokenized (sub-word pieces may merge), appended to the stripped prompt when `append`.
"""

from __future__ import annotations

import numpy as np
import torch

from conceptguard.attacks.base import ATTACKS, Attack, AttackResult, AttackTarget, Budget
from conceptguard.attacks.unlearndiff import ImageFilterTerm


class RingABellBudget(Budget):
    """The paper's search: prompt length 16 (its K77 variant: 77), eta 3, GA population 200,
    3000 generations, mutation rate 0.25, crossover rate 0.5."""

    length: int = 16  # adversarial tokens per prompt
    eta: float = 3.0  # strength of the concept vector
    population: int = 200
    generations: int = 3000
    mutation: float = 0.25  # chance that a child gets a token replaced
    crossover: float = 0.5  # chance that a child is a crossover of two parents (else a copy)
    elite: int = 10  # best candidates carried over unchanged
    tournament: int = 3
    pairs: int = 32  # twin prompts for the concept vector
    append: bool = False  # output "<stripped base prompt> <found tokens>" instead of the tokens alone
    positions: int = 77  # encoder output positions compared (77: all the UNet sees)
    patience: int = 0  # stop after this many generations without improvement (0: never)
    clip_weight: float = 0.1  # ringabell+: a flagged candidate's distance grows by this times the filter hinge

    @classmethod
    def cpu(cls) -> RingABellBudget:
        """Mini world: a short suffix to the stripped prompt, a small population, few generations;
        a few seconds per concept on a CPU."""
        return cls(length=8, eta=3.0, population=24, generations=16, elite=4, append=True, positions=24,
                   patience=6)

    def search_size(self) -> tuple[int, str]:
        return self.population * self.generations, "fitness evaluations"


@ATTACKS.register("ringabell", adaptive=False)
@ATTACKS.register("ringabell+", adaptive=True)
class RingABell(Attack[RingABellBudget]):
    """`ringabell+` (the Espresso paper's filter-aware Ring-A-Bell, our definition: the released
    code's adaptive fitness adds terms that do not depend on the candidate) scales each candidate's
    squared distance by 1 + `clip_weight` x the image-filter hinge (ImageFilterTerm) on the
    candidate's CLIP text embedding, so prompts the target's image filters would flag lose."""

    name = "ringabell"
    threat_model = "text encoder only: concept vector + genetic token search (filter-aware vocabulary)"
    target_dependent = False
    rewrites_seed_prompts = True

    # ------------------------------------------------------------------ embeddings
    def _encode(self, target: AttackTarget, prompts: list[str], batch: int = 512) -> torch.Tensor:
        """The undefended text encoder's output for prompts, the first `positions` positions [B, P, d]."""
        budget = self.budget
        positions = max(2, min(int(budget.positions), target.tokenizer.model_max_length))
        out = []
        with torch.no_grad():
            for start in range(0, len(prompts), batch):
                ids = target.tokenize(prompts[start:start + batch])[:, :positions]
                out.append(target.text_encoder(ids.to(target.unet.device))[0].float().cpu())
        return torch.cat(out)

    def concept_vector(self, target: AttackTarget, seed: int = 0) -> torch.Tensor:
        """mean(E(with the concept) - E(without it)) over twin prompts [positions, d]."""
        pairs = target.domain.twin_prompts(target.concept, self.budget.pairs, seed)
        with_c = self._encode(target, [u for u, _ in pairs])
        without = self._encode(target, [a for _, a in pairs])
        return (with_c - without).mean(0)

    def goals(self, target: AttackTarget, n: int, seed: int) -> tuple[list[str], torch.Tensor]:
        """The base prompts with the blocked words stripped, and each one's target embedding
        E(stripped) + eta * v, flattened [n, positions * d]."""
        bases = target.seed_prompts(n, seed)
        stripped = [target.strip_blocked(p) for p in bases]
        goal = self._encode(target, stripped) + self.budget.eta * self.concept_vector(target, seed)
        return stripped, goal.flatten(1)

    def similarity(self, target: AttackTarget, prompts: list[str], goals: torch.Tensor) -> np.ndarray:
        """The fitness: minus the squared L2 distance between each prompt's embedding and its goal
        (goals [len(prompts), ...]); higher is better."""
        emb = self._encode(target, prompts).flatten(1)
        return -((emb - goals) ** 2).sum(-1).numpy().astype(np.float64)

    # ------------------------------------------------------------------ search
    def attack(self, target: AttackTarget, n: int, seed: int) -> AttackResult:
        budget = self.budget
        rng = np.random.default_rng(seed)
        tok = target.tokenizer
        vocab = target.vocabulary.numpy()
        stripped, goal = self.goals(target, n, seed)
        term = ImageFilterTerm(target) if self.adaptive else None

        L, pop, V = max(1, budget.length), max(2, budget.population), len(vocab)
        elite = min(max(1, budget.elite), pop)

        def texts(genes: np.ndarray, i: int) -> list[str]:
            found = [str(tok.decode([int(vocab[g]) for g in row])).strip() for row in genes]
            if budget.append and stripped[i]:
                return [f"{stripped[i]} {f}".strip() for f in found]
            return [f or stripped[i] for f in found]

        def fitness(genes: np.ndarray) -> tuple[np.ndarray, list[list[str]]]:
            """Each candidate's fitness toward its prompt's goal; -inf where blocked."""
            m = genes.shape[1]
            cand = [texts(genes[i], i) for i in range(n)]
            flat = [t for row in cand for t in row]
            score = self.similarity(target, flat, goal.repeat_interleave(m, 0))
            if term:
                with torch.no_grad():
                    hinge = term.on_text(target.embedder.texts(flat)).cpu().numpy()
                score = score * (1 + budget.clip_weight * hinge)
            score = score.reshape(n, m)
            ok = np.array(target.allowed(flat), dtype=bool).reshape(n, m)
            score[~ok] = -np.inf
            return score, cand

        # initial population: random tokens (the paper), so the search owes nothing to the base prompt
        start_queries = target.queries
        genes = rng.integers(0, V, size=(n, pop, L))
        score, cand = fitness(genes)
        best = score.max(1)
        best_text = [cand[i][int(score[i].argmax())] for i in range(n)]
        stale, gen = 0, 0
        for gen in range(1, budget.generations + 1):
            order = np.argsort(-score, axis=1, kind="stable")
            children = np.empty_like(genes)
            kept = np.take_along_axis(score, order[:, :elite], 1)
            kept_text = [[cand[i][j] for j in order[i, :elite]] for i in range(n)]
            for i in range(n):
                children[i, :elite] = genes[i, order[i, :elite]]
                k = pop - elite
                # tournament selection: the fittest of `tournament` random members, twice per child
                picks = rng.integers(0, pop, size=(k, 2, max(1, budget.tournament)))
                winners = np.take_along_axis(picks, np.argmax(score[i][picks], axis=-1)[..., None], -1)[..., 0]
                a, b = genes[i, winners[:, 0]], genes[i, winners[:, 1]]
                cut = rng.integers(1, L, size=k) if L > 1 else np.zeros(k, dtype=int)
                cross = (rng.random(k) < budget.crossover)[:, None] & (np.arange(L)[None] >= cut[:, None])
                child = np.where(cross, b, a)
                mutate = rng.random(k) < budget.mutation
                pos = rng.integers(0, L, size=k)
                new = rng.integers(0, V, size=k)
                child[mutate, pos[mutate]] = new[mutate]
                children[i, elite:] = child
            genes = children
            new_score, new_cand = fitness(genes[:, elite:])  # the elite were scored already
            score = np.concatenate([kept, new_score], 1)
            cand = [k + c for k, c in zip(kept_text, new_cand)]
            top = score.max(1)
            improved = top > best + 1e-7
            for j in np.flatnonzero(improved):
                best_text[j] = cand[j][int(score[j].argmax())]
            best = np.maximum(best, top)
            target.report("ringabell", gen, budget.generations)
            stale = 0 if improved.any() else stale + 1
            if budget.patience and stale >= budget.patience:
                break

        prompts = [t if np.isfinite(b) else s or "a picture" for t, b, s in zip(best_text, best, stripped)]
        result = self.result(target, prompts, iterations=gen, queries=target.queries - start_queries)
        result.settings = {"fitness": [round(float(b), 4) for b in best]}
        return result
