import numpy as np
import pytest

from conceptguard.domains import get_concept
from conceptguard.errors import UnknownConceptError
from conceptguard.miniworld.domain import MiniWorld
from conceptguard.miniworld.scene import sample_scene
from conceptguard.miniworld.world import CONCEPTS, caption, concept_prompts


def test_five_concepts_with_enough_phrasings():
    concepts = MiniWorld().concepts
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


def test_clip_hard_negatives_change_only_the_shape():
    """NegCLIP-style negatives: the positive caption's wording with another shape word, never a
    held-out colour/shape pair, none for the characters whose shape is fixed."""
    from conceptguard.miniworld.scene import HELDOUT_COMBOS, SHAPES
    from conceptguard.miniworld.train import _named_shape, _shape_negative
    from conceptguard.miniworld.world import SHAPE_WORDS

    rng = np.random.default_rng(0)
    changed = 0
    for _ in range(200):
        scene = sample_scene(rng)
        state = rng.bit_generator.state
        text = caption(scene, rng)
        neg = _shape_negative(scene, state, rng)
        if scene.face or scene.eye:
            assert neg is None and _named_shape(scene, text) == SHAPES.index(scene.shape)
            continue
        named = _named_shape(scene, text)
        if named == -100:  # a generic noun ("an object"): the negative says the same
            assert neg == text
            continue
        assert named == SHAPES.index(scene.shape)
        assert neg != text and len(neg.split()) - len(text.split()) in (-2, -1, 0, 1, 2)
        assert not any(w in neg.split() for w in SHAPE_WORDS[scene.shape] if " " not in w)
        assert not any(c in neg.split() and s in neg.split() for c, s in HELDOUT_COMBOS)
        changed += 1
    assert changed > 100
