"""``choice``: the option of highest log-likelihood after the prompt, compared with the gold one (accuracy)."""

from __future__ import annotations

from hf_recycle._score.kinds import TaskKindDef
from hf_recycle.errors import TaskError


class Choice(TaskKindDef):
    name = "choice"
    default_metric = "accuracy"
    uses_options = True
    order = 1

    def render(self, spec, row, index, prompt, target):
        from hf_recycle._score.data import Example, single_field

        options = row[spec.options]
        if not isinstance(options, (list, tuple)) or not options:
            raise TaskError(
                f"task '{spec.name}': example {index}: field '{spec.options}' must be a non-empty list of options, "
                f"got {options!r}"
            )
        options = tuple(str(o) for o in options)
        label_field = single_field(spec.target)
        raw = row[label_field] if label_field else None
        if isinstance(raw, int) and not isinstance(raw, bool):
            if not 0 <= raw < len(options):
                raise TaskError(
                    f"task '{spec.name}': example {index}: label {raw} is out of range for {len(options)} options"
                )
            label = raw
        elif target in options:
            label = options.index(target)
        elif target.strip() in [o.strip() for o in options]:
            label = [o.strip() for o in options].index(target.strip())
        else:
            raise TaskError(
                f"task '{spec.name}': example {index}: target {target!r} is none of the options {list(options)}: "
                "the target must render the gold option's text or be an integer field holding its index"
            )
        return Example(prompt, options[label], options, label)

    def continuations(self, example):
        return example.options

    def references(self, examples):
        return [e.label for e in examples]

    def aggregate(self, outputs, scorer, n):
        predictions = []
        for i in range(n):
            logprobs = [lp for lp, _ in outputs[scorer.offsets[i] : scorer.offsets[i + 1]]]
            predictions.append(max(range(len(logprobs)), key=logprobs.__getitem__))
        value, per_example = scorer.metric.compute(predictions, scorer.references(n))
        return value, per_example, predictions
