"""Recycling inside a ``transformers`` Trainer run: the callback (:mod:`.callback`) and the
records of the checkpoints it keeps (:mod:`.records`)."""
