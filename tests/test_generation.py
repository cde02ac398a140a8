import warnings

import numpy as np
import pytest

from conceptguard.errors import InvalidInputError
from conceptguard.generation import generate


def _arrays(images):
    return [np.asarray(im) for im in images]


def test_same_seed_same_images_regardless_of_batch(pipe):
    a = _arrays(generate(pipe, ["a red circle", "a blue star"], [3, 4], steps=5))
    b = _arrays(generate(pipe, ["a red circle", "a blue star"], [3, 4], steps=5))
    alone = _arrays(generate(pipe, ["a blue star"], [4], steps=5))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert np.array_equal(a[1], alone[0])
    c = _arrays(generate(pipe, ["a red circle"], [99], steps=5))
    assert not np.array_equal(a[0], c[0])


def test_empty_prompt_is_refused(pipe):
    with pytest.raises(InvalidInputError, match="empty prompt"):
        generate(pipe, ["  "], [0], steps=2)


def test_long_prompt_warns_and_is_truncated(pipe):
    long = "a red circle " * 40
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = generate(pipe, [long], [0], steps=2)
    assert images and any("tokens" in str(w.message) for w in caught)
