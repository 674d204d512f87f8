"""A generated demo scene with ground-truth instance masks (see :mod:`.generate`)."""
