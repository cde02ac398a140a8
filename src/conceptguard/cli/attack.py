"""`conceptguard attack`: adversarial prompts for a concept, found against a defense stack."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from conceptguard.cli.common import app, console, emit_json, out_dir, progress_bar, reporter


@app.command("attack")
def attack_cmd(name: str = typer.Argument(..., help="synonym, typo+, pez[+], ringabell[+], unlearndiff[+], cce[+] or sneaky."),
               concept: str = typer.Option(..., "--concept", help="Concept the prompts should make the model draw."),
               target: str = typer.Option("none", "--target",
                                          help="Defense stack to attack, e.g. esd-x or sanitizer+espresso-ft."),
               out: Path = typer.Option(..., "--out", help="Folder for result.json (prompts, cost) and learned tokens."),
               n: int = typer.Option(8, "--n", min=1, help="Number of adversarial prompts."),
               budget: str = typer.Option("cpu", "--budget", help="cpu (small mini-world preset) or paper (the paper's budget)."),
               model: Optional[str] = typer.Option(None, "--model", help="Base pipeline (default: the mini SD)."),
               clip: Optional[str] = typer.Option(None, "--clip",
                                                  help="The attacker's and filters' CLIP (default: the domain's)."),
               seed: int = typer.Option(0, "--seed"),
               judge: Optional[str] = typer.Option(None, "--judge", help="Judge an attack that stops on success "
                                                   "asks (UnlearnDiffAtk at the paper budget); default: the domain's "
                                                   "first (oracle in the mini world, nudenet for nudity)."),
               as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")) -> None:
    """Run an attack against a target stack and store its prompts as an adversarial prompt set.

    To measure the saved prompts on other defenses, name the folder under `prompt_files` in a
    bench config. (A config that lists `attacks:` runs them against every stack itself.)"""
    from conceptguard.attacks import AttackTarget, get_attack
    from conceptguard.defenses import BuildContext, DefenseStack, build_defenses
    from conceptguard.domains import get_domain
    from conceptguard.eval.judges import check_judge, get_judge
    from conceptguard.guard import GuardedPipeline
    from conceptguard.miniworld.data import cache_dir
    from conceptguard.models import load_pipeline

    attack = get_attack(name, budget)  # bad names fail here, before any model is loaded
    domain = get_domain(model, clip)
    c, stack = domain.concept(concept), DefenseStack.parse(target)
    judge_spec = check_judge(judge or domain.default_judges([c.name])[0])
    out = out_dir(out)
    pipe = load_pipeline(model)
    with progress_bar() as bar:
        progress = reporter(bar)
        ctx = BuildContext(pipe, domain, cache_dir(), seed, progress)
        guard = GuardedPipeline(pipe, build_defenses(stack, c, ctx))
        task = bar.add_task(f"attack {attack.label} {c.name} @ {stack.label}", total=None, info="")
        loaded: dict = {}  # the judge loads only when an attack asks it

        def judged(images: list) -> list[bool]:
            if "judge" not in loaded:
                loaded["judge"] = get_judge(judge_spec, domain)
            return [bool(v["present"]) for v in loaded["judge"].judge(images, c)]

        result = attack.run(AttackTarget(guard, c, domain, stack.label, ctx.embedder, progress, judge=judged), n,
                            seed=seed)
        bar.update(task, total=1, completed=1)
    result.save(out)
    if as_json:
        emit_json({**result.cost(), "prompts": result.prompts, "learned_tokens": sorted(result.tokens.vectors),
                    "settings": result.settings, "out": str(out)})
        return
    table = Table(title=f"{result.attack} -> {c.name} @ {stack.label}")
    table.add_column("#", justify="right")
    table.add_column("adversarial prompt")
    for i, p in enumerate(result.prompts):
        table.add_row(str(i), p)
    Console().print(table)  # the result on stdout, as `bench` and `judge` print theirs; messages on stderr
    console.print(f"{len(result.prompts)} prompts in {result.seconds:.1f} s, {result.queries} queries; saved to {out}")
