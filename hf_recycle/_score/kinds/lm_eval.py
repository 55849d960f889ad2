"""``lm_eval``: an lm-evaluation-harness task, its requests and metric computed by lm-eval itself.

The task names an lm-eval task (``lm_eval: {task: arc_easy}``, found offline in lm-eval's
registry or under ``include_path``) and one of the metric keys lm-eval reports for it
(``metric: "acc,none"``: metric, then filter). Its splits slice the task's evaluation
documents (``docs[:200]``, ``docs[200:]``). The scorer is
:class:`~hf_recycle._score.lm_eval_scorer.LmEvalScorer`; the direction of the score is
lm-eval's metadata for the metric.
"""

from __future__ import annotations

from hf_recycle._score.kinds import TaskKindDef

SPLIT_KEYS = ("search_split", "validation_split", "test_split")


class LmEval(TaskKindDef):
    name = "lm_eval"
    uses_templates = False
    own_field = "lm_eval"
    order = 10

    def direction(self, spec):
        from hf_recycle._score.lm_eval_tasks import registry_direction

        return registry_direction(spec.metric)

    def spec_problems(self, spec):
        from hf_recycle._score.lm_eval_tasks import docs_slice_problem, parse_metric_key
        from hf_recycle._score.tasks import split_overlap

        problems = []
        if spec.metric is None:
            problems.append(
                "kind 'lm_eval' needs 'metric': the key lm-eval reports for the task, metric then filter "
                '(metric: "acc,none")'
            )
        else:
            why = parse_metric_key(spec.metric)[1]
            if why:
                problems.append(why)
        if spec.chat_template:
            problems.append("'chat_template' is not supported for kind 'lm_eval' yet: remove it")
        written = [(key, getattr(spec, key)) for key in SPLIT_KEYS if getattr(spec, key) is not None]
        for key, expression in written:
            why = docs_slice_problem(expression)
            if why:
                problems.append(f"{key} '{expression}': {why}")
        # (the schema checks validation_split against both, and a test_split equal to search_split)
        overlap = split_overlap(spec.search_split, spec.test_split)
        if overlap and overlap != "the same examples":
            problems.append(
                f"test_split '{spec.test_split}' overlaps search_split '{spec.search_split}' ({overlap}): "
                "the test documents must be held out"
            )
        return problems

    def file_problems(self, spec, base_dir):
        from hf_recycle._score.lm_eval_tasks import check_task

        return check_task(spec, base_dir)

    def build_scorer(self, spec, tokenizer, split, base_dir):
        from hf_recycle._score.lm_eval_scorer import LmEvalScorer

        return LmEvalScorer(spec, tokenizer, split=split, base_dir=base_dir)
