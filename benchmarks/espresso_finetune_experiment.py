import sys, numpy as np, torch
torch.set_num_threads(1)
from conceptguard.models import load_pipeline, load_oracle, ClipEmbedder, load_clip
from conceptguard.concepts import get_concept
from conceptguard.defenses.espresso import EspressoFilter, FinetuneConfig, finetune
from conceptguard.eval.prompts import twin_prompts, miniworld_set
from conceptguard.generation import generate
pipe=load_pipeline(); oracle=load_oracle(); emb=ClipEmbedder(*load_clip())
m=float(sys.argv[2])
for concept in sys.argv[1].split(","):
    c=get_concept(concept)
    res=finetune(pipe, emb, c, FinetuneConfig(margin=m))
    pairs = twin_prompts(c.model_copy(update={"train_phrasings": c.unacceptable + c.heldout_phrasings}), 48, seed=4242)
    prompts = [u for u, _ in pairs] + [a for _, a in pairs]
    images = generate(pipe, prompts, [900_000 + i % 48 for i in range(len(prompts))])
    truth = np.array([j["concepts"][concept] > 0.5 for j in oracle.judge(images)])
    acc = miniworld_set(concept, "acceptable", 10, seed=0)
    for name, f in (("before", EspressoFilter(emb, [c])), ("after", res.filter)):
        cert = f.certify(images, truth, concept)
        cor, r = cert["correct"], cert["radius"]
        print(concept, m, name, "acc %.3f" % cor.mean(), "radius %.3f" % r[cor].mean(), "best_epoch", res.best_epoch, flush=True)
