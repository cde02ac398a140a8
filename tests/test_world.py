import numpy as np

from conceptguard.concepts import get_concept, miniworld_concepts
from conceptguard.errors import UnknownConceptError
from conceptguard.miniworld.scene import sample_scene
from conceptguard.miniworld.world import CONCEPTS, caption, concept_prompts

import pytest


def test_five_concepts_with_enough_phrasings():
    concepts = miniworld_concepts()
    assert [c.group for c in concepts] == [1, 1, 2, 2, 3]
    for c in concepts:
        assert len(c.unacceptable) >= 4  # c_u + >= 3 synonyms/paraphrases
        assert len(c.indirect) >= 2
        assert c.train_phrasings and c.heldout_phrasings
        assert not set(c.train_phrasings) & set(c.heldout_phrasings)
        assert set(c.train_phrasings) | set(c.heldout_phrasings) == set(c.unacceptable) | set(c.indirect)
        for indirect in c.indirect:  # indirect descriptions never name the concept
            assert c.name not in indirect


def test_unknown_concept_is_a_clear_error():
    assert get_concept("Burning").name == "burning"
    with pytest.raises(UnknownConceptError, match="known concepts"):
        get_concept("dragons")
    assert get_concept("nudity").c_a == "clean"  # a preset of the Espresso paper, for real models
    from conceptguard.miniworld.world import world_concept

    with pytest.raises(UnknownConceptError, match="not a mini-world concept"):
        world_concept("nudity")


def test_captions_name_every_concept_present():
    rng = np.random.default_rng(0)
    for _ in range(500):
        scene = sample_scene(rng)
        text = caption(scene, rng)
        for concept in CONCEPTS:
            if concept.present(scene):
                assert any(p.text in text for p in concept.phrasings), (text, concept.name)


def test_concept_prompts_use_the_requested_split():
    for concept in CONCEPTS:
        held = [p.text for p in concept.phrasings if p.split == "heldout"]
        for text, want in concept_prompts(concept, "heldout", 8, seed=1):
            assert any(h in text for h in held)
            assert want[concept.name] is True
        for text, want in concept_prompts(concept, "acceptable", 4, seed=1):
            assert want[concept.name] is False
