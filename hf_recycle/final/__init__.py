"""What happens after the search: the final merge of the chosen weights
(:mod:`~hf_recycle.final.merge`), the model card (:mod:`~hf_recycle.final.card`), and the
model folders and their push (:mod:`~hf_recycle.final.folders`)."""
